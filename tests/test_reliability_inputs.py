"""Reproductions of issue #16's input and concurrency faults: each test failed before its fix."""

from __future__ import annotations

from unimo_pipe.pipeline.text import normalize_text


def test_zero_width_joiners_are_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalize_text(f"a {family} picnic") == f"a {family} picnic"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want": ZWNJ inside the word
    assert normalize_text(persian) == persian
    assert normalize_text("a\u200bb\u200e") == "a b"  # other zero-width characters still go
