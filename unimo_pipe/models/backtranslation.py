"""Sentence-level positives by round-trip translation (source -> pivot -> source), per Edunov et al. 2018.

Diversity comes from the forward pass: sampling (top-k / top-p with temperature), noised beam (the beam
output with words dropped (p 0.1), blanked (p 0.1) and shuffled within 3 positions), or several beam
hypotheses. The backward pass is plain beam search. Candidates are filtered (empty, equal to the caption or
to each other after normalisation, degenerate repetition, length-ratio outliers, and optionally a meaning
check: cosine to the caption with a sentence-transformers model); when too few survive, further rounds
draw more, up to a budget. Shortfalls are reported, never padded with duplicates, and so are the texts
cut to a translation model's input limit. A caption whose translation (or one of whose pivots' way back)
failed gets no positives, only the reason.
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
    sources_truncated: int = 0  # distinct captions cut to the forward model's input limit
    pivots_truncated: int = 0  # distinct pivot texts cut to the backward model's input limit
    failures: list[str | None] = field(default_factory=list)  # per caption: why its translation failed, or None


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
        """Positives per caption, with what was rejected, cut or failed on the way.

        Each distinct caption is translated once, whatever its number of occurrences; a failed one is not
        tried again.
        """
        unique = list(dict.fromkeys(captions))
        accepted: dict[str, list[dict]] = {c: [] for c in unique}
        seen: dict[str, set[str]] = {c: set() for c in unique}
        rejected: Counter = Counter()
        tally = TranslationReport()
        failed: dict[str, str] = {}
        for round_index in range(self.max_rounds):
            open_captions = [c for c in unique if len(accepted[c]) < self.positives and c not in failed]
            if not open_captions:
                break
            for caption, candidate in self._candidates(open_captions, round_index, tally, failed):
                self._consider(caption, candidate, accepted, seen, rejected)
        positives = [[] if c in failed else [dict(p) for p in accepted[c]] for c in captions]
        captions_cut = tally.truncated & set(unique)
        return RoundTrips(positives, rejected, len(captions_cut), len(tally.truncated - captions_cut),
                          [failed.get(c) for c in captions])

    def _candidates(self, captions: list[str], round_index: int, tally: TranslationReport, failed: dict[str, str]):
        """(caption, candidate) pairs; captions whose translations fail go into `failed` instead."""
        needed = self.positives
        for pivot, (forward, backward) in self.round_trips.items():
            captions = [c for c in captions if c not in failed]
            k = oversample(needed, len(self.round_trips), round_index)
            pivots, forward_failed = self._forward(forward, captions, k, round_index, tally)
            failed.update(forward_failed)
            distinct = sorted({p for group in pivots for p in group})
            translated, back_failed = self._translate(backward, distinct, self._beam(round_index), 1, tally)
            back = dict(zip(distinct, translated, strict=True))
            for caption, group in zip(captions, pivots, strict=True):
                why = next((back_failed[p] for p in group if p in back_failed), None)
                if why is not None:
                    failed[caption] = why
                    continue
                for pivot_text in group:
                    yield caption, {"text": back[pivot_text][0], "pivot": pivot, "method": self.method}

    @staticmethod
    def _translate(engine, texts: list[str], decoding: Decoding, outputs: int,
                   tally: TranslationReport) -> tuple[list[list[str]], dict[str, str]]:
        """The engine's translations and its failures by text; what it cut is added to `tally`. A report per
        call keeps a caption's failure apart from a pivot text that happens to read the same."""
        call = TranslationReport()
        translations = engine.translate(texts, decoding, outputs, report=call)
        tally.truncated |= call.truncated
        return translations, call.failures

    def _beam(self, round_index: int) -> Decoding:
        return replace(self.decoding, method="beam", seed=self.decoding.seed + round_index)

    def _forward(self, engine, captions: list[str], k: int, round_index: int,
                 tally: TranslationReport) -> tuple[list[list[str]], dict[str, str]]:
        """Pivot texts per caption (none for a failed one) and the failures by caption."""
        if self.method == "sample":
            sampling = replace(self.decoding, method="sample", seed=self.decoding.seed + round_index)
            return self._translate(engine, captions, sampling, k, tally)
        if self.method == "beam":
            return self._translate(engine, captions, self._beam(round_index), k, tally)
        best, failures = self._translate(engine, captions, self._beam(0), 1, tally)
        noised = []
        for caption, group in zip(captions, best, strict=True):
            rng = random.Random(zlib.crc32(f"{self.decoding.seed}:{round_index}:{caption}".encode()))
            noised.append([add_noise(text, self.noise, rng) for text in group for _ in range(k)])
        return noised, failures

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
