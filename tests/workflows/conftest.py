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


def save_tiny_pretrained(root, texts, *, hidden: int = 32, region_dim: int = 16) -> None:
    """A tokenizer trained on `texts` at ROOT/tok and a tiny random model (seed 0) at ROOT/pretrained: the
    starting point of the generation tests."""
    import torch

    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

    build_tiny_tokenizer(root / "tok", texts)
    tokenizer = load_tokenizer(str(root / "tok"), of="--tokenizer")
    torch.manual_seed(0)
    UnifiedModel(tiny_encoder(len(tokenizer), hidden=hidden), region_dim=region_dim).save_pretrained(
        root / "pretrained")
