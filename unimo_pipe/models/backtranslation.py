"""Sentence-level positives by round-trip translation (source -> pivot -> source), per Edunov et al. 2018.

Diversity comes from the forward pass: sampling (top-k / top-p with temperature), noised beam (the beam
output with words dropped (p 0.1), blanked (p 0.1) and shuffled within 3 positions), or several beam
hypotheses. The backward pass is plain beam search. Candidates are filtered (empty, equal to the caption or
to each other after normalisation, degenerate repetition, length-ratio outliers, and optionally a meaning
check: cosine to the caption with a sentence-transformers model); when too few survive, further rounds
draw more, up to a budget. Shortfalls are reported, never padded with duplicates, and so are the texts
cut to a translation model's input limit.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from unimo_pipe.models.negatives import normalise_for_comparison
from unimo_pipe.models.translator import Decoding, TranslationReport, oversample


@dataclass(frozen=True)
class Noise:
    drop: float = 0.1
    blank: float = 0.1
    swap_window: int = 3
    filler: str = "<blank>"


@dataclass(frozen=True)
class Quality:
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    min_similarity: float | None = None  # None: no meaning filter
    drop_degenerate: bool = True


@dataclass
class RoundTrips:
    """What `BackTranslator.run` made of its captions."""

    positives: list[list[dict]]  # per caption: {"text", "pivot", "method", "similarity"?}
    rejected: Counter = field(default_factory=Counter)  # candidates dropped, by reason
    sources_truncated: int = 0  # texts (captions or pivots) cut to a translation model's input limit


def add_noise(text: str, noise: Noise, rng: random.Random) -> str:
    """Edunov et al.'s noise: drop words, replace words by a filler, shuffle within a window."""
    kept = []
    for word in text.split():
        roll = rng.random()
        if roll < noise.drop:
            continue
        kept.append(noise.filler if roll < noise.drop + noise.blank else word)
    keys = [i + rng.uniform(0, noise.swap_window) for i in range(len(kept))]
    return " ".join(word for _, word in sorted(zip(keys, kept, strict=True), key=lambda pair: pair[0]))


def is_degenerate(text: str) -> bool:
    """Repetition typical of broken decoding: a word 4 times in a row, or any 2- or 3-gram 3 times."""
    words = text.lower().split()
    if any(len(set(words[i : i + 4])) == 1 for i in range(len(words) - 3)):
        return True
    for n in (2, 3):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams and max(grams.values()) >= 3:
            return True
    return False


def rejection(candidate: str, caption: str, quality: Quality) -> str | None:
    """Why a candidate is not a usable positive, or None."""
    words, source_words = len(candidate.split()), max(len(caption.split()), 1)
    if not candidate.strip() or not normalise_for_comparison(candidate):
        return "empty"
    if normalise_for_comparison(candidate) == normalise_for_comparison(caption):
        return "same_as_caption"
    if quality.drop_degenerate and is_degenerate(candidate):
        return "degenerate"
    if not quality.min_length_ratio <= words / source_words <= quality.max_length_ratio:
        return "length_ratio"
    return None


class BackTranslator:
    def __init__(self, *, round_trips: dict[str, tuple[Any, Any]], method: str = "sample", decoding: Decoding,
                 positives: int = 3, max_rounds: int = 3, noise: Noise = Noise(), quality: Quality = Quality(),
                 encoder: Any = None):
        self.round_trips = round_trips  # pivot -> (forward engine, backward engine)
        self.method = method
        self.decoding = decoding
        self.positives = positives
        self.max_rounds = max_rounds
        self.noise = noise
        self.quality = quality
        self.encoder = encoder

    def run(self, captions: list[str]) -> RoundTrips:
        """Positives per caption, with what was rejected or cut on the way.

        Each distinct caption is translated once, whatever its number of occurrences.
        """
        unique = list(dict.fromkeys(captions))
        accepted: dict[str, list[dict]] = {c: [] for c in unique}
        seen: dict[str, set[str]] = {c: set() for c in unique}
        rejected: Counter = Counter()
        report = TranslationReport()
        for round_index in range(self.max_rounds):
            open_captions = [c for c in unique if len(accepted[c]) < self.positives]
            if not open_captions:
                break
            for caption, candidate in self._candidates(open_captions, round_index, report):
                self._consider(caption, candidate, accepted, seen, rejected)
        return RoundTrips([[dict(p) for p in accepted[c]] for c in captions], rejected, report.sources_truncated)

    def _candidates(self, captions: list[str], round_index: int, report: TranslationReport):
        needed = self.positives
        for pivot, (forward, backward) in self.round_trips.items():
            k = oversample(needed, len(self.round_trips), round_index)
            pivots = self._forward(forward, captions, k, round_index, report)
            distinct = sorted({p for group in pivots for p in group})
            translated = backward.translate(distinct, self._beam(round_index), report=report)
            back = dict(zip(distinct, (r[0] for r in translated), strict=True))
            for caption, group in zip(captions, pivots, strict=True):
                for pivot_text in group:
                    yield caption, {"text": back[pivot_text], "pivot": pivot, "method": self.method}

    def _beam(self, round_index: int) -> Decoding:
        return replace(self.decoding, method="beam", seed=self.decoding.seed + round_index)

    def _forward(self, engine, captions: list[str], k: int, round_index: int,
                 report: TranslationReport) -> list[list[str]]:
        if self.method == "sample":
            return engine.translate(captions, replace(self.decoding, method="sample",
                                                      seed=self.decoding.seed + round_index), k, report=report)
        if self.method == "beam":
            return engine.translate(captions, self._beam(round_index), k, report=report)
        best = engine.translate(captions, self._beam(0), 1, report=report)
        noised = []
        for caption, (text,) in zip(captions, best, strict=True):
            rng = random.Random(zlib.crc32(f"{self.decoding.seed}:{round_index}:{caption}".encode()))
            noised.append([add_noise(text, self.noise, rng) for _ in range(k)])
        return noised

    def _consider(self, caption: str, candidate: dict, accepted, seen, rejected) -> None:
        if len(accepted[caption]) >= self.positives:
            return
        reason = rejection(candidate["text"], caption, self.quality)
        key = normalise_for_comparison(candidate["text"])
        if reason is None and key in seen[caption]:
            reason = "duplicate"
        if reason is None and self.quality.min_similarity is not None:
            similarity = self._similarity(caption, candidate["text"])
            candidate["similarity"] = round(similarity, 4)
            if similarity < self.quality.min_similarity:
                reason = "low_similarity"
        if reason is not None:
            rejected[reason] += 1
            return
        seen[caption].add(key)
        accepted[caption].append(candidate)

    def _similarity(self, caption: str, text: str) -> float:
        from unimo_pipe.models.embedders import normalize_rows

        vectors, _ = normalize_rows(self.encoder.encode([caption, text]))
        return float(np.dot(vectors[0], vectors[1]))
