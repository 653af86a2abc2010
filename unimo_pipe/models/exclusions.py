"""What may not replace what in a hard negative, and why: the words that could keep the caption true.

Two sources, one interface: `CuratedRelations` (models/lexicon.py's table, all there is without WordNet)
and `WordNetRelations` (models/wordnet.py, with the curated table on top: a word excluded by either is
excluded). For a pool of replacement words and one part of a scene graph ("object", "attribute",
"relation"), `in_pool(words, part)` gives a function from the replaced word to the pool indices it
excludes, by reason (SYNONYM, HYPERNYM, HYPONYM); the word itself and its inflections are left out too,
under no reason. `related(a, b, part)` answers for one pair (object swaps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

from unimo_pipe.models import lexicon
from unimo_pipe.models.wordnet import HYPERNYM, HYPONYM, SYNONYM, WordNet

SAME = ""  # the replaced word itself or an inflection of it: left out, not counted as an exclusion
REASONS = (SYNONYM, HYPERNYM, HYPONYM)
Exclusions = dict[str, set[int]]  # reason -> pool indices

_PREDICATE_SYNONYMS = [{"next to", "beside", "by", "near", "close to", "alongside"},
                       {"on", "on top of", "atop", "upon", "onto"}, {"under", "underneath", "below", "beneath"},
                       {"in", "inside", "within", "into"}, {"behind", "in back of"}, {"with", "having"}]
# Words of predicates that are never their verb ("down" and "out" are also verbs in WordNet).
_PREPOSITION_WORDS = frozenset(w for group in _PREDICATE_SYNONYMS for phrase in group for w in phrase.split()) | {
    "of", "at", "to", "from", "over", "across", "through", "around", "along", "against", "toward", "towards",
    "down", "up", "out", "off", "above", "below", "front", "top", "side", "middle", "back", "edge", "the",
    "between", "among", "past", "onto", "about", "for", "like", "outside", "inside", "underneath", "beyond"}


def word_key(word: str) -> str:
    """A word and its inflections share this key ("dogs" -> "dog")."""
    return lexicon.singularize(word.lower())


def key_of(part: str) -> Callable[[str], str]:
    return str.lower if part == "relation" else word_key


class WordRelations(Protocol):
    def in_pool(self, words: list[str], part: str) -> Callable[[str], Exclusions]: ...

    def related(self, a: str, b: str, part: str) -> bool: ...


def _positions(words: list[str], key: Callable[[str], str]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, word in enumerate(words):
        positions.setdefault(key(word), []).append(i)
    return positions


def related_predicates(predicate: str) -> frozenset[str]:
    return frozenset({predicate}.union(*(group for group in _PREDICATE_SYNONYMS if predicate in group)))


def _compound_and_head(a: str, b: str) -> bool:
    """"fire hydrant" and "hydrant", either way round."""
    return a.rsplit(" ", 1)[-1] == b or b.rsplit(" ", 1)[-1] == a


class CuratedRelations:
    """The curated table of models/lexicon.py (and the table of preposition synonyms)."""

    def in_pool(self, words: list[str], part: str) -> Callable[[str], Exclusions]:
        key = key_of(part)
        positions = _positions(words, key)
        heads = _positions([w.rsplit(" ", 1)[-1] for w in words], key) if part == "object" else {}

        def excluded(original: str) -> Exclusions:
            found: Exclusions = {SAME: set(positions.get(key(original), ()))}
            if part == "relation":
                found[SYNONYM] = {i for p in related_predicates(original) for i in positions.get(p, ())} - found[SAME]
                return found
            taken = set(found[SAME])
            for reason, related in lexicon.relations_by_reason(original).items():
                found[reason] = {i for w in related for i in positions.get(key(w), ())} - taken
                taken |= found[reason]
            if part == "object":  # a compound and its head word: "fire hydrant" -> "hydrant", and back
                found[HYPERNYM] |= set(positions.get(key(original.rsplit(" ", 1)[-1]), ())) - taken
                taken |= found[HYPERNYM]
                found[HYPONYM] |= set(heads.get(key(original), ())) - taken
            return found

        return excluded

    def related(self, a: str, b: str, part: str) -> bool:
        return lexicon.related(a, b) or _compound_and_head(a.lower(), b.lower())


class WordNetRelations:
    """WordNet's relations (objects as nouns, attributes as adjectives or nouns, the verbs of relations),
    with the curated table's on top."""

    def __init__(self, wordnet: WordNet):
        self.wordnet = wordnet
        self.curated = CuratedRelations()

    def in_pool(self, words: list[str], part: str) -> Callable[[str], Exclusions]:
        curated = self.curated.in_pool(words, part)
        if part == "relation":
            return self._predicates_in_pool(words, curated)
        indexes = [self.wordnet.index(words, pos) for pos in (("n",) if part == "object" else ("a", "n"))]

        def excluded(original: str) -> Exclusions:
            found = curated(original)
            taken = set().union(*found.values())
            for index in indexes:
                for reason, indices in index.related(original).items():
                    new = indices - taken
                    found.setdefault(reason, set()).update(new)
                    taken |= new
            return found

        return excluded

    def _predicates_in_pool(self, words: list[str], curated: Callable[[str], Exclusions]
                            ) -> Callable[[str], Exclusions]:
        """Predicate pools are small (one word shape), so each word is compared with the replaced one."""

        def excluded(original: str) -> Exclusions:
            found = curated(original)
            taken = set().union(*found.values())
            for i, word in enumerate(words):
                if i not in taken and (reason := self.predicate_relation(original, word)) is not None:
                    found.setdefault(reason, set()).add(i)
            return found

        return excluded

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one per process, kept for the process)
    def predicate_relation(self, original: str, candidate: str) -> str | None:
        """Predicates whose prepositions are the same (or synonyms) and whose verbs are related."""
        verb_a, rest_a = _verb_and_rest(original)
        verb_b, rest_b = _verb_and_rest(candidate)
        if rest_a != rest_b and rest_b not in related_predicates(rest_a):
            return None
        if verb_a == verb_b:
            return SYNONYM if rest_a != rest_b else None
        if not verb_a or not verb_b:
            return None
        return self.wordnet.relation(verb_a, verb_b, "v")

    def related(self, a: str, b: str, part: str) -> bool:
        return self.curated.related(a, b, part) or self.wordnet.relation(a, b, "n") is not None


def _verb_and_rest(predicate: str) -> tuple[str, str]:
    """"sitting on" -> ("sitting", "on"); "on top of" -> ("", "on top of")."""
    first, _, rest = predicate.lower().partition(" ")
    if first in _PREPOSITION_WORDS:
        return "", predicate.lower()
    return first, rest


def relations_for(wordnet: WordNet | None) -> WordRelations:
    return WordNetRelations(wordnet) if wordnet is not None else CuratedRelations()
