"""Hard negatives from scene graphs: edit the caption's own tokens so that exactly one fact changes.

Kinds: replace_object, replace_attribute (within its group: colour for colour), replace_relation
(with a predicate of the same word shape, e.g. "sitting on" -> "standing behind"), swap_objects,
swap_attributes and reverse_relation. Articles are re-chosen (a/an), nouns keep their number and
counts keep agreement ("one dog" -> "three dogs"). Replacements are sampled by corpus frequency,
deterministically per caption and seed, and never related to the replaced word (models/lexicon.py).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimo_pipe.models import lexicon
from unimo_pipe.models.scene_graph import SceneGraph, SceneObject

_PREDICATE_SYNONYMS = [{"next to", "beside", "by", "near", "close to", "alongside"},
                       {"on", "on top of", "atop", "upon", "onto"}, {"under", "underneath", "below", "beneath"},
                       {"in", "inside", "within", "into"}, {"behind", "in back of"}, {"with", "having"}]


def _related_predicates(predicate: str) -> frozenset[str]:
    return frozenset({predicate}.union(*(group for group in _PREDICATE_SYNONYMS if predicate in group)))


@dataclass
class Vocabulary:
    """Frequencies of objects, attributes (by group) and predicates (by word shape) in a caption corpus."""

    objects: Counter = field(default_factory=Counter)
    attributes: dict[str, Counter] = field(default_factory=dict)
    relations: dict[str, Counter] = field(default_factory=dict)

    def add(self, doc, graph: SceneGraph) -> None:
        for obj in graph.objects:
            self.objects[obj.name] += 1
            for text, index in obj.attributes:
                self.attributes.setdefault(_attribute_key(doc, text, index), Counter())[text] += 1
        for relation in graph.relations:
            if _contiguous(relation.tokens):
                self.relations.setdefault(_shape(doc, relation.tokens), Counter())[relation.predicate] += 1

    def merge(self, other: Vocabulary) -> None:
        self.objects.update(other.objects)
        for key, counts in other.attributes.items():
            self.attributes.setdefault(key, Counter()).update(counts)
        for key, counts in other.relations.items():
            self.relations.setdefault(key, Counter()).update(counts)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": dict(self.objects.most_common()),
                "attributes": {k: dict(v.most_common()) for k, v in sorted(self.attributes.items())},
                "relations": {k: dict(v.most_common()) for k, v in sorted(self.relations.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(Counter(data.get("objects", {})),
                   {k: Counter(v) for k, v in data.get("attributes", {}).items()},
                   {k: Counter(v) for k, v in data.get("relations", {}).items()})

    def save(self, path: Path) -> None:
        from unimo_pipe.pipeline.jsonl import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        """Our own vocab.json, or a plain list of words/objects (e.g. Visual Genome's objects_vocab.txt)."""
        from unimo_pipe.pipeline.errors import UserError

        try:
            if path.suffix == ".txt":
                words = [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
                return cls(objects=Counter({w: 1 for w in words if w}))
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as exc:
            raise UserError(f"cannot read vocabulary {path}: {exc}: use a build-vocab JSON or one word per line"
                            ) from None


def _attribute_key(doc, text: str, index: int) -> str:
    group = lexicon.attribute_group(text)
    if group == "other" and doc[index].dep_ == "compound":
        return "compound"  # noun modifiers replace only noun modifiers ("fire hydrant" -> "water hydrant")
    return group


def _shape(doc, tokens: list[int]) -> str:
    return " ".join(doc[i].tag_ if doc[i].tag_ not in ("IN", "TO", "RP") else doc[i].lower_ for i in tokens[:1]) + \
        (" " + " ".join(doc[i].tag_ for i in tokens[1:]) if len(tokens) > 1 else "")


def _contiguous(tokens: list[int]) -> bool:
    return bool(tokens) and tokens == list(range(tokens[0], tokens[-1] + 1))


@functools.cache
def _article_ids() -> tuple[frozenset[int], int]:
    """spaCy's ids of the lower-cased words "a"/"an", and of the tag DT."""
    from spacy.strings import hash_string

    return frozenset({hash_string("a"), hash_string("an")}), hash_string("DT")


_PUNCTUATION_CHARACTERS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_PUNCTUATION = str.maketrans({c: " " for c in _PUNCTUATION_CHARACTERS})
_ASCII_PUNCTUATION = bytes.maketrans(_PUNCTUATION_CHARACTERS.encode(), b" " * len(_PUNCTUATION_CHARACTERS))


def _lowered_without_punctuation(text: str) -> str:
    lowered = text.lower()
    if lowered.isascii():  # bytes.translate is ~10x faster than str.translate with a dict
        return lowered.encode("ascii").translate(_ASCII_PUNCTUATION).decode("ascii")
    return lowered.translate(_PUNCTUATION)


def normalise_for_comparison(text: str) -> str:
    return " ".join(_lowered_without_punctuation(text).split())


def _normalised_piece(text: str) -> str:
    """normalise_for_comparison of a piece of a text, keeping one space where the piece starts or ends with
    whitespace, so that a piece between two others joins them into the normalised whole."""
    mapped = _lowered_without_punctuation(text)
    core = " ".join(mapped.split())
    if not core:
        return " " if mapped else ""
    return (" " if mapped[0].isspace() else "") + core + (" " if mapped[-1].isspace() else "")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_article(word: str, article: str | None, space: str) -> str:
    """`word` after a re-chosen indefinite article written like `article` ("a"/"An"), if there was one."""
    if article is None:
        return word
    chosen = lexicon.indefinite_article(word)
    return (_capitalised(chosen) if article[:1].isupper() else chosen) + space + word


class _Caption:
    """A caption's text with its tokens' character spans and indefinite articles, read from spaCy in one
    call. Edits replace tokens: the text around them is sliced from the caption, raw and normalised (the
    normalised whole is made once), so an edit costs a few slices and joins."""

    def __init__(self, doc, text: str):
        from spacy.attrs import IDX, LENGTH, LOWER, TAG

        rows = doc.to_array([IDX, LENGTH, LOWER, TAG]).tolist() if len(doc) else []
        if rows and text[rows[-1][0] : rows[-1][0] + rows[-1][1]] != doc[-1].text:
            text = doc.text  # not the Doc's own text: use that rather than slice at wrong offsets
        self.text = text
        self.starts = [row[0] for row in rows]
        self.ends = [row[0] + row[1] for row in rows]
        articles, determiner = _article_ids()
        self.articles = {i for i, row in enumerate(rows) if row[2] in articles and row[3] == determiner}
        mapped = _lowered_without_punctuation(text)
        self.mapped = mapped if len(mapped) == len(text) else None  # lower() may change lengths ("İ")

    def _mapped(self, start: int, end: int | None) -> str:
        if self.mapped is not None:
            return self.mapped[start:end]
        return _lowered_without_punctuation(self.text[start:end])

    def normalised_before(self, index: int) -> str:
        """The normalised text before character `index`, with one space at the end if a word boundary
        is there: the normalised caption with an edit at `index` starts with it."""
        mapped = self._mapped(0, index)
        core = " ".join(mapped.split())
        return core + " " if core and mapped[-1].isspace() else core

    def normalised_after(self, index: int) -> str:
        """Likewise for the text from character `index` on, with one space at the start."""
        mapped = self._mapped(index, None)
        core = " ".join(mapped.split())
        return " " + core if core and mapped[0].isspace() else core

    def article_before(self, index: int) -> tuple[str, str, int] | None:
        """The indefinite article right before token `index`: (as written, the space after it, its start)."""
        if index - 1 not in self.articles:
            return None
        start, end = self.starts[index - 1], self.ends[index - 1]
        return self.text[start:end], self.text[end : self.starts[index]], start

    def render(self, changes: dict[int, str]) -> tuple[str, str]:
        """The caption with single tokens replaced (swaps, count agreement) and their articles re-chosen,
        and its normalised form."""
        text, pieces, position = self.text, [], 0
        for index in sorted(changes):
            start = self.starts[index]
            middle = _capitalised(changes[index]) if text[start : start + 1].isupper() else changes[index]
            article = self.article_before(index) if index - 1 not in changes else None
            if article is not None:
                middle, start = _with_article(middle, article[0], article[1]), article[2]
            pieces += [text[position:start], middle]
            position = self.ends[index]
        pieces.append(text[position:])
        rendered = "".join(pieces).strip()
        return rendered, normalise_for_comparison(rendered)


class _Slot:
    """Tokens first..last of a caption, to be replaced by one word or phrase; an article right before them
    is re-chosen (a/an), and the replacement takes the replaced word's capital and number.

    Nearly all negatives (object, attribute and relation replacements) are made this way and their speed
    sets the stage's overhead over spaCy's parse, so the text around the slot, raw and normalised, is
    sliced once, and the replacements themselves are rendered once per vocabulary word and `variant`.
    """

    def __init__(self, caption: _Caption, first: int, last: int, *, plural: bool = False):
        start, end = caption.starts[first], caption.ends[last]
        self.plural = plural
        self.capital = caption.text[start : start + 1].isupper()
        self.article, self.article_space, article_start = caption.article_before(first) or (None, "", start)
        self.before, self.after = caption.text[:article_start], caption.text[end:]
        self.variant = (plural, self.capital, self.article, self.article_space)
        self.stripped = (self.before.lstrip(), self.after.rstrip(), caption.normalised_before(article_start),
                         caption.normalised_after(end))

    def middle(self, word: str) -> tuple[str, str, bool]:
        """The replacement as written, normalised, and whether both have no space at either end (then
        the negative is a plain concatenation with the slot's stripped surroundings)."""
        text = lexicon.pluralize(word) if self.plural else word
        text = _with_article(_capitalised(text) if self.capital else text, self.article, self.article_space)
        normalised = _normalised_piece(text)
        plain = bool(normalised) and text == text.strip() and normalised == normalised.strip()
        return text, normalised, plain

    def render(self, middle: str) -> tuple[str, str]:
        text = (self.before + middle + self.after).strip()
        return text, normalise_for_comparison(text)


_NO_WORDS: Counter = Counter()


def _word_key(word: str) -> str:
    return lexicon.singularize(word.lower())


@dataclass
class _Pool:
    """Replacement words with their frequencies; their renderings per slot variant by word index; and
    the indices to leave out for each replaced word, found through `key` (a word's inflections share it)."""

    words: list[str]
    weights: list[float]
    cumulative: list[float]
    key: Callable[[str], str]
    positions: dict[str, list[int]] = field(default_factory=dict)
    renderings: dict[tuple, dict[int, tuple[str, str, bool]]] = field(default_factory=dict)
    exclusions: dict[str, tuple[frozenset[int], float]] = field(default_factory=dict)

    @classmethod
    def of(cls, counts: Counter, key: Callable[[str], str]) -> _Pool:
        words = sorted(w for w in counts if counts[w] > 0)
        weights = [float(counts[w]) for w in words]
        pool = cls(words, weights, list(itertools.accumulate(weights)), key)
        for i, word in enumerate(words):
            pool.positions.setdefault(key(word), []).append(i)
        return pool

    def excluded(self, original: str, related_words: Callable[[str], frozenset[str]]
                 ) -> tuple[frozenset[int], float]:
        """Indices of the words that could keep the caption true in place of `original`, and their weight."""
        found = self.exclusions.get(original)
        if found is None:
            keys = {self.key(word) for word in related_words(original)} | {self.key(original)}
            indices = frozenset(i for k in keys for i in self.positions.get(k, ()))
            found = self.exclusions[original] = (indices, sum(self.weights[i] for i in indices))
        return found


class _WeightedDraws:
    """Frequency-weighted draws of a pool's word indices without repeats, until the pool is used up.

    Draws by bisecting the cumulative frequencies and rejecting repeats (and `excluded` indices) while the
    words left hold at least a tenth of the frequency mass, so a draw costs at most ten tries; then the
    rest of the pool is put in a weighted random order in one go (exponential keys, Efraimidis & Spirakis
    2006), so nothing is left out and no word comes twice.
    """

    def __init__(self, pool: _Pool, rng: random.Random,
                 excluded: tuple[frozenset[int], float] = (frozenset(), 0.0)):
        """`excluded`: indices never to draw and their total weight (_Pool.excluded)."""
        self.pool = pool
        self.rng = rng
        self.used = set(excluded[0])
        self.mass_left = (pool.cumulative[-1] if pool.words else 0.0) - excluded[1]
        self.order: list[int] | None = None if len(self.used) < len(pool.words) else []

    @property
    def left(self) -> int:
        return len(self.order) if self.order is not None else len(self.pool.words) - len(self.used)

    def take(self, n: int) -> list[int]:
        """Up to n more indices; fewer only when the pool is used up."""
        found: list[int] = []
        if self.order is None:
            cumulative, weights, used, draw = self.pool.cumulative, self.pool.weights, self.used, self.rng.random
            total, last, bisect_right = cumulative[-1], len(cumulative) - 1, bisect.bisect_right
            while len(found) < n:
                for i in [bisect_right(cumulative, draw() * total, 0, last) for _ in range(n - len(found))]:
                    if i not in used:
                        used.add(i)
                        found.append(i)
                        self.mass_left -= weights[i]
                if len(found) < n and self.mass_left < 0.1 * total:
                    self.order = self._remaining_order()
                    break
        if self.order and len(found) < n:
            rest = self.order[len(self.order) - (n - len(found)):]
            del self.order[len(self.order) - len(rest):]
            found += reversed(rest)
        return found

    def _remaining_order(self) -> list[int]:
        """The unused indices in weighted random order, the next draw last: key log(u) / w, u ~ U(0, 1]."""
        weights, used, draw, log = self.pool.weights, self.used, self.rng.random, math.log
        keys = {i: log(1.0 - draw()) / w for i, w in enumerate(weights) if i not in used}
        return sorted(keys, key=keys.__getitem__)


class _Maker:
    """Negatives of one kind at one place in the caption, taken a quota at a time; `capacity` bounds how
    many it can still make."""

    exhausted = False

    @property
    def capacity(self) -> int:
        raise NotImplementedError

    def take(self, quota: int, taken: set[str]) -> list[dict]:
        raise NotImplementedError


class _Candidates(_Maker):
    """A few edits that change several tokens (swaps, reversals, count changes), rendered as taken.
    Each edit is (token index -> new word, kind, from, to)."""

    def __init__(self, caption: _Caption, edits: list[tuple[dict[int, str], str, str, str]]):
        self.caption = caption
        self.edits = edits
        self.next = 0
        self.exhausted = not edits

    @property
    def capacity(self) -> int:
        return len(self.edits) - self.next

    def take(self, quota: int, taken: set[str]) -> list[dict]:
        found: list[dict] = []
        while len(found) < quota and self.next < len(self.edits):
            changes, kind, original, replacement = self.edits[self.next]
            self.next += 1
            text, normalised = self.caption.render(changes)
            if normalised not in taken:
                taken.add(normalised)
                found.append({"text": text, "kind": kind, "from": original, "to": replacement})
        self.exhausted = self.next == len(self.edits)
        return found


class _Replacements(_Maker):
    """One slot replaced by words drawn from a pool: object, attribute and relation replacements, the
    stage's hot loop (a negative costs a dictionary lookup and two string concatenations)."""

    def __init__(self, slot: _Slot, pool: _Pool, rng: random.Random, *, kind: str, original: str,
                 related_words: Callable[[str], frozenset[str]]):
        self.slot, self.pool, self.kind, self.original = slot, pool, kind, original
        self.draws = _WeightedDraws(pool, rng, pool.excluded(original, related_words))
        self.exhausted = self.draws.order == []

    @property
    def capacity(self) -> int:
        return self.draws.left

    def take(self, quota: int, taken: set[str]) -> list[dict]:
        slot, words, kind, original = self.slot, self.pool.words, self.kind, self.original
        rendered = self.pool.renderings.setdefault(slot.variant, {})
        before, after, before_normalised, after_normalised = slot.stripped
        found: list[dict] = []
        while len(found) < quota:
            indices = self.draws.take(quota - len(found))
            if not indices:
                self.exhausted = True
                break
            for i in indices:
                middle = rendered.get(i)
                if middle is None:
                    middle = rendered[i] = slot.middle(words[i])
                text, normalised, plain = middle
                if plain:
                    text, normalised = before + text + after, before_normalised + normalised + after_normalised
                else:
                    text, normalised = slot.render(text)
                if normalised not in taken:
                    taken.add(normalised)
                    found.append({"text": text, "kind": kind, "from": original, "to": words[i]})
        return found


class NegativeGenerator:
    def __init__(self, *, vocabulary: Vocabulary, negatives: int = 100, seed: int = 0):
        self.vocabulary = vocabulary
        self.negatives = negatives
        self.seed = seed
        self._pools: dict[tuple, _Pool] = {}
        self._attribute_pools = {group: Counter(vocabulary.attributes.get(group, {})) for group in
                                 (*lexicon.ATTRIBUTE_GROUPS, "compound")}
        for group, words in (("colour", lexicon.COLOURS), ("size", lexicon.SIZES),
                             ("material", lexicon.MATERIALS), ("count", lexicon.COUNTS)):
            for word in words:  # every group offers replacements even when the corpus is small
                self._attribute_pools[group][word] += 0.5

    def generate(self, doc, graph: SceneGraph, *, key: str, forbidden: set[str] = frozenset()) -> list[dict]:
        """Up to `negatives` distinct negatives of one caption, none equal to it or to `forbidden` texts.

        Every place and kind of change gets an equal share, except that what a place cannot make goes to
        the others. The result interleaves the places, so any prefix of it is a fair sample.
        """
        rng = random.Random(zlib.crc32(f"{self.seed}:{key}".encode()))
        taken = {normalise_for_comparison(graph.caption)} | {normalise_for_comparison(t) for t in forbidden}
        makers = [m for m in self._makers(doc, _Caption(doc, graph.caption), graph, rng)
                  if not m.exhausted and m.capacity > 0]
        rng.shuffle(makers)
        found: list[dict] = []
        while makers and len(found) < self.negatives:
            quotas = _shares(self.negatives - len(found), [maker.capacity for maker in makers])
            batches = [maker.take(quota, taken) for maker, quota in zip(makers, quotas, strict=True)]
            interleaved = list(filter(None, itertools.chain.from_iterable(itertools.zip_longest(*batches))))
            found += interleaved[: self.negatives - len(found)]
            makers = [m for m in makers if not m.exhausted and m.capacity > 0]
        return found

    def _makers(self, doc, caption: _Caption, graph: SceneGraph, rng: random.Random) -> list[_Maker]:
        makers: list[_Maker] = []
        for obj in graph.objects:
            makers.append(self._replace_object(caption, obj, rng))
            for text, index in obj.attributes:
                makers.append(self._replace_attribute(doc, caption, obj, text, index, rng))
        for relation in graph.relations:
            if _contiguous(relation.tokens):
                makers.append(self._replace_relation(doc, caption, relation, rng))
        makers.append(_Candidates(caption, _reversals(graph)))
        makers.append(_Candidates(caption, _object_swaps(graph)))
        makers.append(_Candidates(caption, _attribute_swaps(doc, graph)))
        return makers

    def _pool(self, name: tuple, counts: Counter, key: Callable[[str], str] = _word_key) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _Pool.of(counts, key)
        return pool

    def _replace_object(self, caption: _Caption, obj: SceneObject, rng) -> _Maker:
        slot = _Slot(caption, obj.head, obj.head, plural=obj.plural)
        return _Replacements(slot, self._pool(("object",), self.vocabulary.objects), rng, kind="replace_object",
                             original=obj.name, related_words=lexicon.related_words)

    def _replace_attribute(self, doc, caption: _Caption, obj: SceneObject, text: str, index: int, rng
                           ) -> _Maker:
        group = _attribute_key(doc, text, index)
        pool = self._pool(("attribute", group), self._attribute_pools.get(group, _NO_WORDS))
        if group != "count":
            return _Replacements(_Slot(caption, index, index), pool, rng, kind="replace_attribute", original=text,
                                 related_words=lexicon.related_words)
        if _part_of_longer_number(doc[index]):
            return _Candidates(caption, [])  # "twenty four": replacing "four" alone would break the number
        order = _WeightedDraws(pool, rng, pool.excluded(text, lexicon.related_words)).take(len(pool.words))
        return _Candidates(caption, [({index: pool.words[i], obj.head: _noun_for_count(obj, pool.words[i])},
                                      "replace_attribute", text, pool.words[i]) for i in order])

    def _replace_relation(self, doc, caption: _Caption, relation, rng) -> _Maker:
        shape = _shape(doc, relation.tokens)
        pool = self._pool(("relation", shape), self.vocabulary.relations.get(shape, _NO_WORDS),
                          key=str.lower)
        slot = _Slot(caption, relation.tokens[0], relation.tokens[-1])
        return _Replacements(slot, pool, rng, kind="replace_relation", original=relation.predicate,
                             related_words=_related_predicates)



Edit = tuple[dict[int, str], str, str, str]  # token index -> new word, kind, from, to


def _reversals(graph: SceneGraph) -> list[Edit]:
    edits = []
    for relation in graph.relations:
        subject, target = graph.objects[relation.subject], graph.objects[relation.object]
        if subject.name != target.name:
            edits.append((_swapped_heads(subject, target), "reverse_relation",
                          f"{subject.name} {relation.predicate} {target.name}",
                          f"{target.name} {relation.predicate} {subject.name}"))
    return edits


def _object_swaps(graph: SceneGraph) -> list[Edit]:
    objects = graph.objects
    linked = {frozenset((r.subject, r.object)) for r in graph.relations}  # those are reversals
    return [(_swapped_heads(objects[i], objects[j]), "swap_objects", objects[i].name, objects[j].name)
            for i in range(len(objects)) for j in range(i + 1, len(objects))
            if frozenset((i, j)) not in linked and not lexicon.related(objects[i].name, objects[j].name)]


def _attribute_swaps(doc, graph: SceneGraph) -> list[Edit]:
    """Two attributes of the same group on different objects trade places ("a white dog and a black cat")."""
    attributes = [(text, index, obj.head, _attribute_key(doc, text, index))
                  for obj in graph.objects for text, index in obj.attributes]
    return [({i: text_b, j: text_a}, "swap_attributes", text_a, text_b)
            for a, (text_a, i, owner_a, group_a) in enumerate(attributes)
            for text_b, j, owner_b, group_b in attributes[a + 1 :]
            if owner_a != owner_b and group_a == group_b != "count" and text_a != text_b]


def _shares(total: int, capacities: list[int]) -> list[int]:
    """Equal shares of `total`, none above its capacity, what one cannot take going to the others."""
    shares = [0] * len(capacities)
    left = total
    by_capacity = sorted(range(len(capacities)), key=capacities.__getitem__)
    for rank, i in enumerate(by_capacity):
        shares[i] = min(capacities[i], -(-left // (len(capacities) - rank)))
        left -= shares[i]
    return shares


def _swapped_heads(first: SceneObject, second: SceneObject) -> dict[int, str]:
    return {first.head: lexicon.pluralize(second.name) if first.plural else second.name,
            second.head: lexicon.pluralize(first.name) if second.plural else first.name}


def _part_of_longer_number(token) -> bool:
    return any(t.pos_ == "NUM" for t in token.children) or token.head.pos_ == "NUM"


def _noun_for_count(obj: SceneObject, count: str) -> str:
    """The head noun follows the new count: "one dog" -> "three dogs", "two dogs" -> "one dog"."""
    value = lexicon.number_word_value(count)
    return obj.name if value == 1 else lexicon.pluralize(obj.name)
