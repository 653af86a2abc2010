"""Hard negatives from scene graphs: edit the caption's own tokens so that exactly one fact changes.

Kinds: replace_object, replace_attribute (within its group: colour for colour), replace_relation
(with a predicate of the same word shape, e.g. "sitting on" -> "standing behind"), swap_objects,
swap_attributes and reverse_relation. Articles are re-chosen (a/an), nouns keep their number and
counts keep agreement ("one dog" -> "three dogs"). Replacements are sampled by corpus frequency,
deterministically per caption and seed, and never related to the replaced word (models/lexicon.py).
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimo_pipe.models import lexicon
from unimo_pipe.models.scene_graph import SceneGraph, SceneObject

_PREDICATE_SYNONYMS = [{"next to", "beside", "by", "near", "close to", "alongside"},
                       {"on", "on top of", "atop", "upon", "onto"}, {"under", "underneath", "below", "beneath"},
                       {"in", "inside", "within", "into"}, {"behind", "in back of"}, {"with", "having"}]


def _predicates_related(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _PREDICATE_SYNONYMS)


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


_PUNCTUATION = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"})


def normalise_for_comparison(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCTUATION).split())


class _Tokens:
    """A caption's tokens as plain Python values, read from spaCy once per caption."""

    def __init__(self, doc):
        self.words = [t.text for t in doc]
        self.spaces = [t.whitespace_ for t in doc]
        self.articles = {t.i for t in doc if t.lower_ in ("a", "an") and t.tag_ == "DT"}
        pieces = [w + sp for w, sp in zip(self.words, self.spaces, strict=True)]
        self.prefix = ["".join(pieces[:i]) for i in range(len(pieces) + 1)]
        self.suffix = ["".join(pieces[i:]) for i in range(len(pieces) + 1)]


class _Edit:
    """A caption with some tokens replaced. Only the article right before a replaced word is re-chosen
    (a/an), so the rest of the caption stays exactly as written."""

    def __init__(self, tokens: _Tokens):
        self.tokens = tokens
        self.changes: dict[int, str] = {}

    def replace(self, index: int, text: str) -> None:
        original = self.tokens.words[index]
        self.changes[index] = text[:1].upper() + text[1:] if original[:1].isupper() else text

    def replace_span(self, tokens: list[int], text: str) -> None:
        self.replace(tokens[0], text)
        for i in tokens[1:]:
            self.changes[i] = ""

    def _with_articles(self) -> dict[int, str]:
        changes = dict(self.changes)
        for index in sorted(self.changes):
            article = index - 1
            if article in self.tokens.articles and article not in self.changes and changes[index]:
                chosen = lexicon.indefinite_article(changes[index])
                changes[article] = chosen.capitalize() if self.tokens.words[article][:1].isupper() else chosen
        return changes

    def render(self) -> str:
        changes = self._with_articles()
        tokens = self.tokens
        if len(changes) == 1 or (len(changes) == 2 and max(changes) - min(changes) == 1):
            first, last = min(changes), max(changes)
            middle = "".join(changes[i] + tokens.spaces[i] for i in range(first, last + 1) if changes[i])
            return (tokens.prefix[first] + middle + tokens.suffix[last + 1]).strip()
        words = [changes.get(i, w) for i, w in enumerate(tokens.words)]
        text = "".join(w + tokens.spaces[i] for i, w in enumerate(words) if w)
        return " ".join(text.split())


class NegativeGenerator:
    def __init__(self, *, vocabulary: Vocabulary, negatives: int = 100, seed: int = 0):
        self.vocabulary = vocabulary
        self.negatives = negatives
        self.seed = seed
        self._pools: dict[tuple, tuple[list[str], list[float]]] = {}
        self._attribute_pools = {group: Counter(vocabulary.attributes.get(group, {})) for group in
                                 (*lexicon.ATTRIBUTE_GROUPS, "compound")}
        for group, words in (("colour", lexicon.COLOURS), ("size", lexicon.SIZES),
                             ("material", lexicon.MATERIALS), ("count", lexicon.COUNTS)):
            for word in words:  # every group offers replacements even when the corpus is small
                self._attribute_pools[group][word] += 0.5

    def generate(self, doc, graph: SceneGraph, *, key: str, forbidden: set[str] = frozenset()) -> list[dict]:
        """Up to `negatives` distinct negatives of one caption, none equal to it or to `forbidden` texts."""
        rng = random.Random(zlib.crc32(f"{self.seed}:{key}".encode()))
        taken = {normalise_for_comparison(doc.text)} | {normalise_for_comparison(t) for t in forbidden}
        makers = self._makers(doc, _Tokens(doc), graph, rng)
        found: list[dict] = []
        misses = 0
        while makers and len(found) < self.negatives and misses < 20 * self.negatives:
            maker = makers[rng.randrange(len(makers))]
            negative = next(maker, None)
            if negative is None:
                makers.remove(maker)
                continue
            text = normalise_for_comparison(negative["text"])
            if text in taken:
                misses += 1
                continue
            taken.add(text)
            found.append(negative)
        return found

    def _makers(self, doc, tokens: _Tokens, graph: SceneGraph, rng: random.Random) -> list[Iterator[dict]]:
        makers: list[Iterator[dict]] = []
        for obj in graph.objects:
            makers.append(self._replace_object(tokens, obj, rng))
            for text, index in obj.attributes:
                makers.append(self._replace_attribute(doc, tokens, obj, text, index, rng))
        for relation in graph.relations:
            if _contiguous(relation.tokens):
                makers.append(self._replace_relation(doc, tokens, relation, rng))
            makers.append(self._reverse_relation(tokens, graph, relation))
        makers.append(self._swap_objects(tokens, graph))
        makers.append(self._swap_attributes(doc, tokens, graph))
        return makers

    def _sampler(self, cache_key: tuple, pool: Counter, rng: random.Random,
                 allowed: Callable[[str], bool]) -> Iterator[str]:
        """Frequency-weighted draws without repeats from the allowed words of `pool`.

        The filtered pool and its cumulative weights are computed once per key and reused across captions.
        """
        if cache_key not in self._pools:
            words = [w for w in sorted(pool) if allowed(w)]
            self._pools[cache_key] = (words, list(itertools.accumulate(pool[w] for w in words)))
        words, cumulative = self._pools[cache_key]
        used: set[int] = set()
        misses = 0
        while len(used) < len(words) and misses < 50:
            i = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
            i = min(i, len(words) - 1)
            if i in used:
                misses += 1
                continue
            used.add(i)
            yield words[i]

    def _replace_object(self, tokens: _Tokens, obj: SceneObject, rng) -> Iterator[dict]:
        allowed = lambda w: not lexicon.related(obj.name, w)  # noqa: E731
        for word in self._sampler(("object", obj.name), self.vocabulary.objects, rng, allowed):
            edit = _Edit(tokens)
            edit.replace(obj.head, lexicon.pluralize(word) if obj.plural else word)
            yield {"text": edit.render(), "kind": "replace_object", "from": obj.name, "to": word}

    def _replace_attribute(self, doc, tokens: _Tokens, obj: SceneObject, text: str, index: int, rng
                           ) -> Iterator[dict]:
        group = _attribute_key(doc, text, index)
        if group == "count" and _part_of_longer_number(doc[index]):
            return  # "twenty four": replacing "four" alone would break the number
        pool = self._attribute_pools.get(group, Counter())
        allowed = lambda w: not lexicon.related(text, w)  # noqa: E731
        for word in self._sampler(("attribute", group, text), pool, rng, allowed):
            edit = _Edit(tokens)
            edit.replace(index, word)
            if group == "count":
                _agree_with_count(edit, obj, word)
            yield {"text": edit.render(), "kind": "replace_attribute", "from": text, "to": word}

    def _replace_relation(self, doc, tokens: _Tokens, relation, rng) -> Iterator[dict]:
        shape = _shape(doc, relation.tokens)
        pool = self.vocabulary.relations.get(shape, Counter())
        allowed = lambda p: not _predicates_related(relation.predicate, p)  # noqa: E731
        for predicate in self._sampler(("relation", shape, relation.predicate), pool, rng, allowed):
            edit = _Edit(tokens)
            edit.replace_span(relation.tokens, predicate)
            yield {"text": edit.render(), "kind": "replace_relation", "from": relation.predicate, "to": predicate}

    def _reverse_relation(self, tokens: _Tokens, graph, relation) -> Iterator[dict]:
        subject, target = graph.objects[relation.subject], graph.objects[relation.object]
        if subject.name != target.name:
            yield {"text": _swapped_heads(tokens, subject, target), "kind": "reverse_relation",
                   "from": f"{subject.name} {relation.predicate} {target.name}",
                   "to": f"{target.name} {relation.predicate} {subject.name}"}

    def _swap_objects(self, tokens: _Tokens, graph) -> Iterator[dict]:
        objects = graph.objects
        linked = {frozenset((r.subject, r.object)) for r in graph.relations}  # those are reverse_relation
        for i in range(len(objects)):
            for j in range(i + 1, len(objects)):
                if frozenset((i, j)) not in linked and not lexicon.related(objects[i].name, objects[j].name):
                    yield {"text": _swapped_heads(tokens, objects[i], objects[j]), "kind": "swap_objects",
                           "from": objects[i].name, "to": objects[j].name}

    def _swap_attributes(self, doc, tokens: _Tokens, graph) -> Iterator[dict]:
        pairs = [(text, index) for obj in graph.objects for text, index in obj.attributes]
        owners = {index: obj.head for obj in graph.objects for _, index in obj.attributes}
        for a in range(len(pairs)):
            for b in range(a + 1, len(pairs)):
                (text_a, i), (text_b, j) = pairs[a], pairs[b]
                same_group = _attribute_key(doc, text_a, i) == _attribute_key(doc, text_b, j) != "count"
                if owners[i] != owners[j] and same_group and text_a != text_b:
                    edit = _Edit(tokens)
                    edit.replace(i, text_b)
                    edit.replace(j, text_a)
                    yield {"text": edit.render(), "kind": "swap_attributes", "from": text_a, "to": text_b}


def _swapped_heads(tokens: _Tokens, first: SceneObject, second: SceneObject) -> str:
    edit = _Edit(tokens)
    edit.replace(first.head, lexicon.pluralize(second.name) if first.plural else second.name)
    edit.replace(second.head, lexicon.pluralize(first.name) if second.plural else first.name)
    return edit.render()


def _part_of_longer_number(token) -> bool:
    return any(t.pos_ == "NUM" for t in token.children) or token.head.pos_ == "NUM"


def _agree_with_count(edit: _Edit, obj: SceneObject, count: str) -> None:
    """The head noun follows the new count: "one dog" -> "three dogs", "two dogs" -> "one dog"."""
    value = lexicon.number_word_value(count)
    plural = value is None or value != 1
    edit.replace(obj.head, lexicon.pluralize(obj.name) if plural else obj.name)
