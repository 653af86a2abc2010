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
