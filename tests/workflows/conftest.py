"""Fixtures of the workflow tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """One run of `unimo-pipe demo` (its report included) and what it printed; tests that damage outputs
    copy what they damage."""
    import contextlib
    import io

    from unimo_pipe.pipeline.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture
def interrupted_at_step(monkeypatch):
    """`with interrupted_at_step(4): ...` makes a training run inside raise KeyboardInterrupt (as Ctrl-C
    does) right after its step 4 is done and logged."""
    import contextlib

    from unimo_pipe.workflows.training_loop import TrainingLoop

    original = TrainingLoop._after_step

    @contextlib.contextmanager
    def interrupted(step: int):
        def stop_after(self, row):
            original(self, row)
            if self.step == step:
                raise KeyboardInterrupt

        monkeypatch.setattr(TrainingLoop, "_after_step", stop_after)
        try:
            yield
        finally:
            monkeypatch.setattr(TrainingLoop, "_after_step", original)

    return interrupted
