from __future__ import annotations

from unimo_pipe.pipeline.text import normalize_text, split_sentences, truncate_text


def test_normalize_text():
    assert normalize_text("  A\u200b dog\tand\n\na cafe\u0301 \u0007") == "A dog and a caf\u00e9"


def test_truncate_at_word_boundary():
    assert truncate_text("short", 10) == ("short", False)
    text, cut = truncate_text("one two three four five", 12)
    assert cut and text == "one two"


def test_split_sentences_keeps_abbreviations_initials_and_decimals():
    text = ('Mr. J. R. Smith paid 3.5 dollars, e.g. for tea. "Was it good?" she asked. '
            "It was! The U.S. team won. (They cheered.) End")
    assert split_sentences(text) == [
        "Mr. J. R. Smith paid 3.5 dollars, e.g. for tea.", '"Was it good?" she asked.', "It was!",
        "The U.S. team won.", "(They cheered.)", "End"]
    assert split_sentences("") == []
