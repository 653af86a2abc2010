"""Sentence-level positives by round-trip translation (source -> pivot -> source), per Edunov et al. 2018.

Diversity comes from the forward pass: sampling (top-k / top-p with temperature), noised beam (the beam
output with words dropped (p 0.1), blanked (p 0.1) and shuffled within 3 positions), or several beam
hypotheses. The backward pass is plain beam search. Candidates are filtered (empty, equal to the caption or
to each other after normalisation, degenerate repetition, length-ratio outliers, and optionally a meaning
check: cosine to the caption with a sentence-transformers model); when too few survive, further rounds
draw more, up to a number of rounds. Each round asks only the captions still short, each only for what
it still misses, oversampled by the share of candidates the filters have let through so far in the run
(never more than 8x); and no caption costs more than a budget of translations (forward outputs and
backward translations, all rounds and pivots together): a caption stopped by it is counted. Shortfalls
are reported, never padded with duplicates, and so are the texts cut to a translation model's input
limit. A caption whose translation (or one of whose pivots' way back) failed gets no positives, only the
reason.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from unimo_pipe.models.negatives import normalise_for_comparison
from unimo_pipe.models.translator import Decoding, TranslationReport

FIRST_ACCEPTANCE = 0.5  # the share of candidates assumed to pass before any was filtered: ask twice the need
MIN_ACCEPTANCE = 1 / 8  # however few pass, a round asks at most 8x what a caption misses
TRANSLATIONS_PER_POSITIVE = 8  # the default budget: translations per caption for each positive asked


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
    translations: int = 0  # forward outputs and backward translations asked for, over the distinct captions
    budget_reached: int = 0  # distinct captions still short when their translation budget ran out


@dataclass
class _Caption:
    """One distinct caption's progress over the rounds."""

    accepted: list[dict] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # normalised texts of its accepted candidates
    translations: int = 0  # spent on it so far
    considered: int = 0  # candidates it got
    beams_taken: dict[str, int] = field(default_factory=dict)  # beam: hypotheses already used, per pivot
    best: dict[str, list[str]] = field(default_factory=dict)  # noised beam: the forward beam output, per pivot
    out_of_budget: bool = False


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
                 encoder: Any = None, max_translations: int | None = None):
        self.round_trips = round_trips  # pivot -> (forward engine, backward engine)
        self.method = method
        self.decoding = decoding
        self.positives = positives
        self.max_rounds = max_rounds
        self.noise = noise
        self.quality = quality
        self.encoder = encoder
        self.max_translations = max_translations or TRANSLATIONS_PER_POSITIVE * positives

    def run(self, captions: list[str]) -> RoundTrips:
        """Positives per caption, with what was rejected, cut or failed on the way.

        Each distinct caption is translated once per round at most, whatever its number of occurrences; a
        failed one is not tried again.
        """
        unique = list(dict.fromkeys(captions))
        state = {c: _Caption() for c in unique}
        rejected: Counter = Counter()
        tally = TranslationReport()
        failed: dict[str, str] = {}
        for round_index in range(self.max_rounds):
            for pivot, engines in self.round_trips.items():  # each pivot asks for what the ones before left
                asks = self._asks(state, failed, pivot)
                if not asks:
                    continue
                for caption, candidate in self._candidates(pivot, engines, asks, state, round_index, tally, failed):
                    self._consider(caption, candidate, state[caption], rejected)
        positives = [[] if c in failed else [dict(p) for p in state[c].accepted] for c in captions]
        captions_cut = tally.truncated & set(unique)
        return RoundTrips(positives, rejected, len(captions_cut), len(tally.truncated - captions_cut),
                          [failed.get(c) for c in captions], sum(s.translations for s in state.values()),
                          sum(s.out_of_budget and len(s.accepted) < self.positives and c not in failed
                              for c, s in state.items()))

    def _asks(self, state: dict[str, _Caption], failed: dict[str, str], pivot: str) -> dict[str, int]:
        """Candidates to ask from `pivot` per caption still short: what it misses over the share accepted so
        far, this pivot's part of it, within what its budget still pays for."""
        considered = sum(s.considered for s in state.values())
        accepted = sum(len(s.accepted) for s in state.values())
        share = max(accepted / considered if considered else FIRST_ACCEPTANCE, MIN_ACCEPTANCE)
        asks = {}
        for caption, progress in state.items():
            missing = self.positives - len(progress.accepted)
            if missing <= 0 or caption in failed or progress.out_of_budget:
                continue
            wanted = math.ceil(math.ceil(missing / share) / len(self.round_trips))
            affordable = self._affordable(progress, pivot)
            if affordable < 1:
                progress.out_of_budget = True
                continue
            asks[caption] = min(wanted, affordable)
        return asks

    def _affordable(self, progress: _Caption, pivot: str) -> int:
        """Candidates from `pivot` the caption's remaining budget pays for: each costs its way back, and its
        forward output (sampling), or the beam hypotheses before it too (beam), or nothing once the one
        forward beam output is known (noised beam)."""
        left = self.max_translations - progress.translations
        if self.method == "noised-beam":
            return left - (pivot not in progress.best)
        if self.method == "beam":
            return (left - progress.beams_taken.get(pivot, 0)) // 2
        return left // 2

    def _candidates(self, pivot: str, engines: tuple[Any, Any], asks: dict[str, int], state: dict[str, _Caption],
                    round_index: int, tally: TranslationReport, failed: dict[str, str]):
        """(caption, candidate) pairs from one pivot; captions whose translations fail go into `failed`."""
        forward, backward = engines
        pivots, forward_failed = self._forward(forward, pivot, asks, state, round_index, tally)
        failed.update(forward_failed)
        distinct = sorted({p for group in pivots.values() for p in group})
        translated, back_failed = self._translate(backward, distinct, self._beam(round_index), 1, tally)
        back = dict(zip(distinct, translated, strict=True))
        for caption, group in pivots.items():
            state[caption].translations += len(group)
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

    def _forward(self, engine, pivot: str, asks: dict[str, int], state: dict[str, _Caption], round_index: int,
                 tally: TranslationReport) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Pivot texts per caption asked (none for a failed one) and the failures by caption; what each
        forward translation cost is added to its caption."""
        if self.method == "noised-beam":
            return self._noised(engine, pivot, asks, state, round_index, tally)
        pivots, failures = {}, {}
        by_outputs: dict[int, list[str]] = {}
        for caption, count in asks.items():
            taken = state[caption].beams_taken.get(pivot, 0) if self.method == "beam" else 0
            by_outputs.setdefault(taken + count, []).append(caption)
        decoding = (self._beam(round_index) if self.method == "beam"
                    else replace(self.decoding, method="sample", seed=self.decoding.seed + round_index))
        for outputs, captions in sorted(by_outputs.items()):
            translated, failed = self._translate(engine, captions, decoding, outputs, tally)
            failures.update(failed)
            for caption, group in zip(captions, translated, strict=True):
                progress = state[caption]
                progress.translations += outputs
                if self.method == "beam":  # beam search is deterministic: only hypotheses not used before are new
                    taken = progress.beams_taken.get(pivot, 0)
                    group = group[taken:]
                    progress.beams_taken[pivot] = outputs
                if caption not in failed:
                    pivots[caption] = group
        return pivots, failures

    def _noised(self, engine, pivot: str, asks: dict[str, int], state: dict[str, _Caption], round_index: int,
                tally: TranslationReport) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Noised copies of each caption's forward beam output, translated once in its first round."""
        new = [c for c in asks if pivot not in state[c].best]
        best, failures = self._translate(engine, new, self._beam(0), 1, tally)
        for caption, group in zip(new, best, strict=True):
            state[caption].translations += 1
            state[caption].best[pivot] = group
        pivots = {}
        for caption, count in asks.items():
            if caption in failures:
                continue
            rng = random.Random(zlib.crc32(f"{self.decoding.seed}:{round_index}:{caption}".encode()))
            pivots[caption] = [add_noise(text, self.noise, rng) for text in state[caption].best[pivot]
                               for _ in range(count)]
        return pivots, failures

    def _consider(self, caption: str, candidate: dict, progress: _Caption, rejected: Counter) -> None:
        if len(progress.accepted) >= self.positives:
            return
        progress.considered += 1
        reason = rejection(candidate["text"], caption, self.quality)
        key = normalise_for_comparison(candidate["text"])
        if reason is None and key in progress.seen:
            reason = "duplicate"
        if reason is None and self.quality.min_similarity is not None:
            similarity = self._similarity(caption, candidate["text"])
            candidate["similarity"] = round(similarity, 4)
            if similarity < self.quality.min_similarity:
                reason = "low_similarity"
        if reason is not None:
            rejected[reason] += 1
            return
        progress.seen.add(key)
        progress.accepted.append(candidate)

    def _similarity(self, caption: str, text: str) -> float:
        from unimo_pipe.models.embedders import normalize_rows

        vectors, _ = normalize_rows(self.encoder.encode([caption, text]))
        return float(np.dot(vectors[0], vectors[1]))
