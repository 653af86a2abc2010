"""Hard negatives from scene graphs: edit the caption's own tokens so that exactly one fact changes.

Kinds: replace_object (a compound such as "fire hydrant" is one object, replaced whole), replace_attribute
(within its group: colour for colour), replace_relation (with a predicate of the same word shape, e.g.
"sitting on" -> "standing behind"; any one-word preposition replaces another: "on" -> "under"),
swap_objects, swap_attributes and reverse_relation. Articles are re-chosen (a/an), nouns keep their
number and counts keep agreement ("one dog sits" -> "three dogs sit"); with WordNet, a noun goes into a
plural place only when the corpus or WordNet shows its plural (never "traffics"). Replacements are
sampled by corpus frequency, deterministically per caption and seed, and never related to the replaced
word (models/exclusions.py); what was left out, and why, is counted.

How many of each kind: by default every place and kind of change gets an equal share of --negatives, and
what one cannot make goes to the others. A `mix` (kind -> weight) instead makes the list's kinds follow
the weights among the kinds a caption can make, stopping when a kind runs out at its turn: fewer
negatives, but swaps and relation edits are not drowned by replacements.
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
from unimo_pipe.models.exclusions import SAME, Exclusions, WordRelations, relations_for
from unimo_pipe.models.scene_graph import SceneGraph, SceneObject

KINDS = ("replace_object", "replace_attribute", "replace_relation", "reverse_relation", "swap_objects",
         "swap_attributes")
_KIND_ALIASES = {"swap_object": "swap_objects", "swap_attribute": "swap_attributes"}
ONE_WORD_PREPOSITION = "PREP"  # the word shape of a relation that is one preposition ("on", "under")
UNCOUNTABLE, COMPOUND = "uncountable", "compound"  # exclusion reasons besides WordNet's


def parse_mix(spec: str) -> dict[str, float]:
    """"replace_object=1,swap_attribute=2,..." -> {kind: weight}; kinds left out get weight 0 (never made).
    Raises ValueError with the reason."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        kind = _KIND_ALIASES.get(name.strip(), name.strip())
        if not sep or kind not in KINDS:
            raise ValueError(f"{item!r} is not KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: the weight {value.strip()!r} is not a number") from None
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"{item!r}: a weight must be a finite number >= 0")
        if kind in mix:
            raise ValueError(f"{kind} is given twice")
        mix[kind] = weight
    if not any(mix.values()):
        raise ValueError("no kind has a weight above 0")
    return mix


@dataclass
class Vocabulary:
    """Frequencies of objects, attributes (by group) and predicates (by word shape) in a caption corpus."""

    objects: Counter = field(default_factory=Counter)
    attributes: dict[str, Counter] = field(default_factory=dict)
    relations: dict[str, Counter] = field(default_factory=dict)
    plurals: dict[str, Counter] = field(default_factory=dict)  # object -> its plural forms as written

    def add(self, doc, graph: SceneGraph) -> None:
        for obj in graph.objects:
            self.objects[obj.name] += 1
            if obj.plural:
                written = " ".join(doc[i].lower_ for i in range(obj.first, obj.head + 1))
                self.plurals.setdefault(obj.name, Counter())[written] += 1
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
        for key, counts in other.plurals.items():
            self.plurals.setdefault(key, Counter()).update(counts)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": dict(self.objects.most_common()),
                "attributes": {k: dict(v.most_common()) for k, v in sorted(self.attributes.items())},
                "relations": {k: dict(v.most_common()) for k, v in sorted(self.relations.items())},
                "plurals": {k: dict(v.most_common()) for k, v in sorted(self.plurals.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(Counter(data.get("objects", {})),
                   {k: Counter(v) for k, v in data.get("attributes", {}).items()},
                   {k: Counter(v) for k, v in data.get("relations", {}).items()},
                   {k: Counter(v) for k, v in data.get("plurals", {}).items()})

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


_PREPOSITION_TAGS = ("IN", "TO", "RP")


def _shape(doc, tokens: list[int]) -> str:
    if len(tokens) == 1 and doc[tokens[0]].tag_ in _PREPOSITION_TAGS:
        return ONE_WORD_PREPOSITION
    return " ".join(doc[i].tag_ if doc[i].tag_ not in _PREPOSITION_TAGS else doc[i].lower_ for i in tokens[:1]) + \
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

    def render(self, changes: dict[Span, str]) -> tuple[str, str]:
        """The caption with token spans replaced (swaps, count agreement) and their articles re-chosen,
        and its normalised form."""
        text, pieces, position = self.text, [], 0
        lasts = {last for _, last in changes}
        for first, last in sorted(changes):
            start, word = self.starts[first], changes[(first, last)]
            middle = _capitalised(word) if text[start : start + 1].isupper() else word
            article = self.article_before(first) if first - 1 not in lasts else None
            if article is not None:
                middle, start = _with_article(middle, article[0], article[1]), article[2]
            pieces += [text[position:start], middle]
            position = self.ends[last]
        pieces.append(text[position:])
        rendered = "".join(pieces).strip()
        return rendered, normalise_for_comparison(rendered)


Span = tuple[int, int]  # first and last token


class _Slot:
    """Tokens first..last of a caption, to be replaced by one word or phrase; an article right before them
    is re-chosen (a/an), and the replacement takes the replaced word's capital and number.

    Nearly all negatives (object, attribute and relation replacements) are made this way and their speed
    sets the stage's overhead over spaCy's parse, so the text around the slot, raw and normalised, is
    sliced once, and the replacements themselves are rendered once per vocabulary word and `variant`.
    """

    def __init__(self, caption: _Caption, first: int, last: int, *,
                 plural_of: Callable[[str], str | None] | None = None):
        """`plural_of`: for a place in the plural, how a replacement is written there."""
        start, end = caption.starts[first], caption.ends[last]
        self.plural = plural_of is not None
        self.plural_of = plural_of
        self.capital = caption.text[start : start + 1].isupper()
        self.article, self.article_space, article_start = caption.article_before(first) or (None, "", start)
        self.before, self.after = caption.text[:article_start], caption.text[end:]
        self.variant = (self.plural, self.capital, self.article, self.article_space)
        self.stripped = (self.before.lstrip(), self.after.rstrip(), caption.normalised_before(article_start),
                         caption.normalised_after(end))

    def middle(self, word: str) -> tuple[str, str, bool]:
        """The replacement as written, normalised, and whether both have no space at either end (then
        the negative is a plain concatenation with the slot's stripped surroundings)."""
        text = (self.plural_of(word) or word) if self.plural_of is not None else word
        text = _with_article(_capitalised(text) if self.capital else text, self.article, self.article_space)
        normalised = _normalised_piece(text)
        plain = bool(normalised) and text == text.strip() and normalised == normalised.strip()
        return text, normalised, plain

    def render(self, middle: str) -> tuple[str, str]:
        text = (self.before + middle + self.after).strip()
        return text, normalise_for_comparison(text)


_NO_WORDS: Counter = Counter()


@dataclass
class _Exclusion:
    """The pool indices one replaced word leaves out, their total weight, and how many for each reason."""

    indices: frozenset[int]
    weight: float
    by_reason: tuple[tuple[str, int], ...]


@dataclass
class _Pool:
    """Replacement words with their frequencies; their renderings per slot variant by word index; and
    the indices each replaced word leaves out (`related`: by reason)."""

    words: list[str]
    weights: list[float]
    cumulative: list[float]
    related: Callable[[str], Exclusions]
    renderings: dict[tuple, dict[int, tuple[str, str, bool]]] = field(default_factory=dict)
    exclusions: dict[str, _Exclusion] = field(default_factory=dict)

    @classmethod
    def of(cls, counts: Counter, related_in: Callable[[list[str]], Callable[[str], Exclusions]]) -> _Pool:
        words = sorted(w for w in counts if counts[w] > 0)
        weights = [float(counts[w]) for w in words]
        return cls(words, weights, list(itertools.accumulate(weights)), related_in(words))

    def excluded(self, original: str) -> _Exclusion:
        """The words that could keep the caption true in place of `original`."""
        found = self.exclusions.get(original)
        if found is None:
            by_reason = self.related(original)
            indices = frozenset().union(*by_reason.values())
            counts = tuple((reason, len(found)) for reason, found in by_reason.items() if reason != SAME and found)
            found = self.exclusions[original] = _Exclusion(indices, sum(self.weights[i] for i in indices), counts)
        return found


class _WeightedDraws:
    """Frequency-weighted draws of a pool's word indices without repeats, until the pool is used up.

    Draws by bisecting the cumulative frequencies and rejecting repeats (and `excluded` indices) while the
    words left hold at least a tenth of the frequency mass, so a draw costs at most ten tries; then (or at
    once, when all that is left is asked for: small pools) the rest of the pool is put in a weighted random
    order in one go (exponential keys, Efraimidis & Spirakis 2006), so nothing is left out and no word
    comes twice.
    """

    def __init__(self, pool: _Pool, rng: random.Random, excluded: _Exclusion | None = None):
        """`excluded`: indices never to draw (_Pool.excluded)."""
        self.pool = pool
        self.rng = rng
        self.used = set(excluded.indices) if excluded is not None else set()
        self.mass_left = (pool.cumulative[-1] if pool.words else 0.0) - (excluded.weight if excluded else 0.0)
        self.order: list[int] | None = None if len(self.used) < len(pool.words) else []

    @property
    def left(self) -> int:
        return len(self.order) if self.order is not None else len(self.pool.words) - len(self.used)

    def take(self, n: int) -> list[int]:
        """Up to n more indices; fewer only when the pool is used up."""
        found: list[int] = []
        if self.order is None and n >= self.left:  # all of it: one weighted shuffle, not draws and rejections
            self.order = self._remaining_order()
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
    kind = ""

    @property
    def capacity(self) -> int:
        raise NotImplementedError

    def take(self, quota: int, taken: set[str]) -> list[dict]:
        raise NotImplementedError


class _Candidates(_Maker):
    """A few edits that change several tokens (swaps, reversals, count changes), rendered as taken.
    Each edit is (token span -> new words, kind, from, to)."""

    def __init__(self, caption: _Caption, edits: list[Edit], kind: str):
        self.caption = caption
        self.edits = edits
        self.kind = kind
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
                 excluded: Counter | None = None):
        """`excluded`: counts, by reason, the pool words left out."""
        self.slot, self.pool, self.kind, self.original = slot, pool, kind, original
        exclusion = pool.excluded(original)
        if excluded is not None:
            for reason, count in exclusion.by_reason:
                excluded[reason] += count
        self.draws = _WeightedDraws(pool, rng, exclusion)
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
    def __init__(self, *, vocabulary: Vocabulary, negatives: int = 100, seed: int = 0, wordnet=None,
                 lexicon_words: bool = False, mix: dict[str, float] | None = None):
        """`wordnet` (models/wordnet.WordNet): its exclusions and plurals, else the curated lexicon's;
        `lexicon_words`: the lexicon's colours, sizes, materials and counts join the attribute pools (at
        weight 0.5), not only the corpus's; `mix`: kind -> weight (parse_mix), else equal shares."""
        self.vocabulary = vocabulary
        self.negatives = negatives
        self.seed = seed
        self.mix = mix
        self.wordnet = wordnet
        self.relations: WordRelations = relations_for(wordnet)
        self._pools: dict[tuple, _Pool] = {}
        self._plurals: dict[str, str | None] = {}
        self._uncountable_objects: int | None = None  # object words without a plural (with WordNet)
        self._attribute_pools = {group: Counter(vocabulary.attributes.get(group, {})) for group in
                                 (*lexicon.ATTRIBUTE_GROUPS, "compound")}
        if lexicon_words:
            for group, words in (("colour", lexicon.COLOURS), ("size", lexicon.SIZES),
                                 ("material", lexicon.MATERIALS), ("count", lexicon.COUNTS)):
                for word in words:
                    self._attribute_pools[group][word] += 0.5
        self.excluded: Counter = Counter()  # the last caption's left-out replacements, by reason

    def plural_of(self, noun: str) -> str | None:
        """The noun in the plural: as the corpus writes it, else WordNet's irregular plural, else by rule;
        with WordNet, None (no plural) for a noun neither shows in the plural ("traffic", "rain",
        "furniture"), unless it names animals or people ("dog": WordNet has no regular plurals)."""
        found = self._plurals.get(noun, "")
        if found == "":
            forms = self.vocabulary.plurals.get(noun)
            if forms:
                found = forms.most_common(1)[0][0]
            elif self.wordnet is None:
                found = lexicon.pluralize(noun)
            elif noun in self.wordnet.irregular_plurals:
                found = self.wordnet.irregular_plurals[noun]
            else:
                found = lexicon.pluralize(noun) if self.wordnet.is_creature(noun) else None
            self._plurals[noun] = found
        return found

    def generate(self, doc, graph: SceneGraph, *, key: str, forbidden: set[str] = frozenset()) -> list[dict]:
        """Up to `negatives` distinct negatives of one caption, none equal to it or to `forbidden` texts.

        Every place and kind of change gets an equal share, except that what a place cannot make goes to
        the others (or, with a mix, the kinds follow its weights). The result interleaves the places, so
        any prefix of it is a fair sample. `self.excluded` then counts what was left out, by reason.
        """
        rng = random.Random(zlib.crc32(f"{self.seed}:{key}".encode()))
        taken = {normalise_for_comparison(graph.caption)} | {normalise_for_comparison(t) for t in forbidden}
        self.excluded = Counter()
        makers = [m for m in self._makers(doc, _Caption(doc, graph.caption), graph, rng)
                  if not m.exhausted and m.capacity > 0]
        rng.shuffle(makers)
        return self._mixed(makers, taken) if self.mix is not None else self._equal_shares(makers, taken)

    def _equal_shares(self, makers: list[_Maker], taken: set[str]) -> list[dict]:
        found: list[dict] = []
        while makers and len(found) < self.negatives:
            quotas = _shares(self.negatives - len(found), [maker.capacity for maker in makers])
            batches = [maker.take(quota, taken) for maker, quota in zip(makers, quotas, strict=True)]
            interleaved = list(filter(None, itertools.chain.from_iterable(itertools.zip_longest(*batches))))
            found += interleaved[: self.negatives - len(found)]
            makers = [m for m in makers if not m.exhausted and m.capacity > 0]
        return found

    def _mixed(self, makers: list[_Maker], taken: set[str]) -> list[dict]:
        """Weighted turns: kind k's n-th negative is due at n / weight(k), and the earliest due goes next
        (its places in turn). When a kind has nothing left at its turn, the list ends once the other
        kinds have had their turns due by then, so the kinds keep the mix's proportions."""
        mix = self.mix or {}
        by_kind: dict[str, list[_Maker]] = {}
        for maker in makers:
            if mix.get(maker.kind, 0) > 0:
                by_kind.setdefault(maker.kind, []).append(maker)
        made = dict.fromkeys(by_kind, 0)
        due = lambda kind: (made[kind] + 1) / mix[kind]  # noqa: E731
        found: list[dict] = []
        end = math.inf
        while by_kind and len(found) < self.negatives:
            kind = min(by_kind, key=lambda k: (due(k), KINDS.index(k)))
            if due(kind) > end:
                break
            negative = _next_of(by_kind[kind], taken)
            if negative is None:
                end = min(end, due(kind))
                del by_kind[kind]
                continue
            made[kind] += 1
            found.append(negative)
        return found

    def _makers(self, doc, caption: _Caption, graph: SceneGraph, rng: random.Random) -> list[_Maker]:
        makers: list[_Maker] = []
        for obj in graph.objects:
            makers.append(self._replace_object(caption, obj, rng))
            if obj.kept_whole:
                self.excluded[COMPOUND] += obj.kept_whole
            for text, index in obj.attributes:
                makers.append(self._replace_attribute(doc, caption, obj, text, index, rng))
        for relation in graph.relations:
            if _contiguous(relation.tokens):
                makers.append(self._replace_relation(doc, caption, relation, rng))
        makers.append(_Candidates(caption, self._edits(_reversals(graph, self._swapped_heads)), "reverse_relation"))
        makers.append(_Candidates(caption, self._edits(_object_swaps(graph, self._swapped_heads, self.relations)),
                                  "swap_objects"))
        makers.append(_Candidates(caption, _attribute_swaps(doc, graph), "swap_attributes"))
        return makers

    def _edits(self, edits: list[Edit | None]) -> list[Edit]:
        """The edits that can be written: None for one that would put an uncountable noun in the plural."""
        if None in edits:
            self.excluded[UNCOUNTABLE] += edits.count(None)
        return [edit for edit in edits if edit is not None]

    def _pool(self, name: tuple, counts: Counter, part: str) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _Pool.of(counts, lambda words: self.relations.in_pool(words, part))
        return pool

    def _replace_object(self, caption: _Caption, obj: SceneObject, rng) -> _Maker:
        pool = self._pool(("object",), self.vocabulary.objects, "object")
        if obj.plural and self.wordnet is not None:  # a plural place: only the nouns that have a plural
            if self._uncountable_objects is None:
                countable = Counter({w: n for w, n in self.vocabulary.objects.items() if self.plural_of(w)})
                self._uncountable_objects = len(pool.words) - len(countable)
                self._pool(("object", "plural"), countable, "object")
            pool = self._pools[("object", "plural")]
            self.excluded[UNCOUNTABLE] += self._uncountable_objects
        slot = _Slot(caption, obj.first, obj.head, plural_of=self.plural_of if obj.plural else None)
        return _Replacements(slot, pool, rng, kind="replace_object", original=obj.name, excluded=self.excluded)

    def _replace_attribute(self, doc, caption: _Caption, obj: SceneObject, text: str, index: int, rng
                           ) -> _Maker:
        group = _attribute_key(doc, text, index)
        pool = self._pool(("attribute", group), self._attribute_pools.get(group, _NO_WORDS), "attribute")
        if group != "count":
            return _Replacements(_Slot(caption, index, index), pool, rng, kind="replace_attribute", original=text,
                                 excluded=self.excluded)
        if _part_of_longer_number(doc[index]):
            return _Candidates(caption, [], "replace_attribute")  # "twenty four": replacing "four" would break it
        exclusion = pool.excluded(text)
        order = _WeightedDraws(pool, rng, exclusion).take(len(pool.words))
        edits = [self._count_change(doc, obj, index, text, pool.words[i]) for i in order]
        return _Candidates(caption, self._edits(edits), "replace_attribute")

    def _count_change(self, doc, obj: SceneObject, index: int, count: str, new_count: str) -> Edit | None:
        """"one dog sits" -> "three dogs sit": the count, the noun's number and its verb's agreement."""
        plural = lexicon.number_word_value(new_count) != 1
        noun = self.plural_of(obj.name) if plural else obj.name
        if noun is None:
            return None
        changes = {(index, index): new_count, (obj.first, obj.head): noun}
        if plural != obj.plural:
            changes.update(_verb_agreement(doc, obj, plural))
        return changes, "replace_attribute", count, new_count

    def _replace_relation(self, doc, caption: _Caption, relation, rng) -> _Maker:
        shape = _shape(doc, relation.tokens)
        pool = self._pool(("relation", shape), self.vocabulary.relations.get(shape, _NO_WORDS), "relation")
        slot = _Slot(caption, relation.tokens[0], relation.tokens[-1])
        return _Replacements(slot, pool, rng, kind="replace_relation", original=relation.predicate,
                             excluded=self.excluded)

    def _swapped_heads(self, first: SceneObject, second: SceneObject) -> dict[Span, str] | None:
        """Two objects trade places, each taking the other's number; None if a noun has no plural."""
        into_first = self.plural_of(second.name) if first.plural else second.name
        into_second = self.plural_of(first.name) if second.plural else first.name
        if into_first is None or into_second is None:
            return None
        return {(first.first, first.head): into_first, (second.first, second.head): into_second}


def _next_of(makers: list[_Maker], taken: set[str]) -> dict | None:
    """One negative from the first of `makers` that has one, which then goes to the back (places in turn)."""
    while makers:
        maker = makers.pop(0)
        found = maker.take(1, taken)
        if not maker.exhausted and maker.capacity > 0:
            makers.append(maker)
        if found:
            return found[0]
    return None


Edit = tuple[dict[Span, str], str, str, str]  # token span -> new words, kind, from, to
SwapHeads = Callable[[SceneObject, SceneObject], "dict[Span, str] | None"]


def _reversals(graph: SceneGraph, swapped_heads: SwapHeads) -> list[Edit | None]:
    edits: list[Edit | None] = []
    for relation in graph.relations:
        subject, target = graph.objects[relation.subject], graph.objects[relation.object]
        if subject.name != target.name:
            changes = swapped_heads(subject, target)
            edits.append(None if changes is None else
                         (changes, "reverse_relation", f"{subject.name} {relation.predicate} {target.name}",
                          f"{target.name} {relation.predicate} {subject.name}"))
    return edits


def _object_swaps(graph: SceneGraph, swapped_heads: SwapHeads, relations: WordRelations) -> list[Edit | None]:
    objects = graph.objects
    linked = {frozenset((r.subject, r.object)) for r in graph.relations}  # those are reversals
    edits: list[Edit | None] = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            if frozenset((i, j)) not in linked and not relations.related(objects[i].name, objects[j].name, "object"):
                changes = swapped_heads(objects[i], objects[j])
                edits.append(None if changes is None else (changes, "swap_objects", objects[i].name, objects[j].name))
    return edits


def _attribute_swaps(doc, graph: SceneGraph) -> list[Edit]:
    """Two attributes of the same group on different objects trade places ("a white dog and a black cat")."""
    attributes = [(text, index, obj.head, _attribute_key(doc, text, index))
                  for obj in graph.objects for text, index in obj.attributes]
    return [({(i, i): text_b, (j, j): text_a}, "swap_attributes", text_a, text_b)
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


def _part_of_longer_number(token) -> bool:
    return any(t.pos_ == "NUM" for t in token.children) or token.head.pos_ == "NUM"


_SINGULAR_TO_PLURAL_VERBS = {"is": "are", "was": "were", "has": "have", "does": "do"}
_PLURAL_TO_SINGULAR_VERBS = {v: k for k, v in _SINGULAR_TO_PLURAL_VERBS.items()}


def _verb_agreement(doc, obj: SceneObject, plural: bool) -> dict[Span, str]:
    """The present-tense verbs (and "was"/"were") of a noun that is their only subject, in its new number."""
    noun = doc[obj.head]
    if noun.dep_ not in ("nsubj", "nsubjpass") or any(c.dep_ == "conj" for c in noun.children):
        return {}
    verb = noun.head
    changes = {}
    for token in [verb, *(c for c in verb.children if c.dep_ in ("aux", "auxpass"))]:
        word = token.lower_
        if plural and token.tag_ == "VBZ" or plural and word == "was":
            new = _SINGULAR_TO_PLURAL_VERBS.get(word) or token.lemma_.lower()
        elif not plural and token.tag_ == "VBP" or not plural and word == "were":
            new = _PLURAL_TO_SINGULAR_VERBS.get(word) or _third_person(word)
        else:
            continue
        if new != word:
            changes[(token.i, token.i)] = new
    return changes


def _third_person(verb: str) -> str:
    if verb in ("go", "do"):
        return verb + "es"
    if verb.endswith(("s", "x", "z", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"
