"""Text clean-up shared by every stage: Unicode normalisation and a dependency-free sentence splitter."""

from __future__ import annotations

import re
import unicodedata

# Zero-width joiner and non-joiner (U+200D, U+200C) are not listed: they join emoji sequences and
# shape Persian and Indic words, so removing them changes the text.
_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_SPACES = re.compile(r"\s+")
# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by space and a capital, digit or quote.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "no", "fig",
    "approx", "inc", "ltd", "co", "u.s", "u.k", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "gen", "col", "capt", "lt", "sgt", "rev", "vol", "p", "pp",
}


def normalize_text(text: str) -> str:
    """NFC, control and zero-width characters (but not joiners) removed, whitespace collapsed, ends stripped."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def truncate_text(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut at the last word boundary within `max_chars`; returns (text, was_truncated)."""
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(), True


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences, keeping abbreviations ("Dr.", "e.g.") and initials intact."""
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start : match.end(1)]
        if _ends_with_abbreviation(candidate):
            continue
        pieces.append(candidate.strip())
        start = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _ends_with_abbreviation(sentence: str) -> bool:
    words = sentence.rstrip("\"')]\u201d\u2019").split()
    if not words:
        return False
    last = words[-1].rstrip(".").lower().lstrip("(\"'")
    is_initial = len(last) == 1 and last.isalpha()
    return last in _ABBREVIATIONS or is_initial
