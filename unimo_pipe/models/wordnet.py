"""WordNet 3.x for hard negatives, read through NLTK's WordNet reader from any WordNet dict folder.

What it answers: whether one word may replace another (never a synonym, a hypernym or a hyponym: the
caption could stay true), which multiword nouns are one object ("fire hydrant", "polar bear"), and which
nouns WordNet lists with an irregular plural. The replaced word means what it usually means: its senses
tagged in WordNet's sense-tagged corpus (SemCor counts), or its first sense when none was; its rare senses
would otherwise exclude nearly everything ("dog" is also a "cad", a person, and a "frank", a food). A
replacement is left out if any of its senses is a synonym or more general ("canine" is a tooth first, an
animal too), or if its usual senses are more specific.

- nouns: same synset; a hypernym at any depth (instance hypernyms too: a more general word always keeps
  the caption true); a hyponym at any depth (a more specific word may make it true);
- adjectives: same synset, similar-to and also-see (both directions), counted as synonyms;
- verbs (the verb of a relation's predicate): same synset, hypernyms, hyponyms (troponyms), entailments.

Where WordNet is: `--wordnet DIR` (a dict folder: data.noun, index.noun, ...), else NLTK's data path
(`python -m nltk.downloader wordnet`), else Debian's wordnet-base (/usr/share/wordnet). Debian's folder
has no `lexnames` file, which NLTK's reader opens first; it is the fixed list of WordNet's 45
lexicographer files, supplied here.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
DISABLED = "off"  # --wordnet off: the curated lexicon, without looking for WordNet ("none" means the default)
INSTALL_HINT = "apt install wordnet-base, or python -m nltk.downloader wordnet"
_DICT_FILES = ("index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj")
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
_LEXNAME_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
SYNONYM, HYPERNYM, HYPONYM = "synonym", "hypernym", "hyponym"
_CREATURES = ("noun.animal", "noun.person")
_CREATURE_ROOTS = frozenset({"person.n.01", "animal.n.01"})


def is_dict_folder(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _DICT_FILES)


def locate(option: str | None) -> Path | None:
    """The WordNet dict folder to use: `option` (a folder, or "none"), else the first one found."""
    if option == DISABLED:
        return None
    if option is not None:
        return Path(option) if is_dict_folder(Path(option)) else None
    for candidate in _nltk_folders() + [DEBIAN_WORDNET]:
        if is_dict_folder(candidate):
            return candidate
    return None


def locate_or_warn(option: str | None) -> Path | None:
    """locate(option), with one warning line when WordNet is asked for but not found."""
    found = locate(option)
    if found is None and option != DISABLED:
        where = f"no WordNet dict folder at {option}" if option else "WordNet not found"
        logger.warning("augment: %s: hard negatives exclude only the curated lexicon's synonyms and hypernyms "
                       "and split compound nouns; install it (%s) or pass --wordnet DIR", where, INSTALL_HINT)
    return found


def _nltk_folders() -> list[Path]:
    """corpora/wordnet under every folder of NLTK's data path (a downloaded, unzipped WordNet)."""
    try:
        import nltk.data
    except ImportError:
        return []
    return [Path(str(root)) / "corpora" / "wordnet" for root in nltk.data.path]


@functools.lru_cache(maxsize=2)
def load(folder: Path) -> WordNet:
    """The WordNet of a dict folder, once per process."""
    return WordNet(folder)


def _reader(folder: Path):
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class DictFolderReader(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames" and not (folder / "lexnames").is_file():
                return io.StringIO("".join(f"{i:02d}\t{name}\t{_LEXNAME_POS[name.split('.')[0]]}\n"
                                           for i, name in enumerate(_LEXNAMES)))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None  # the mapping to NLTK's own WordNet 3.0 is for multilingual data, not used here

    if str(folder.resolve()) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder.resolve()))  # NLTK reads only inside its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return DictFolderReader(str(folder.resolve()), None)


def _lemma_key(phrase: str) -> str:
    return "_".join(phrase.lower().split())


def _spaced(lemma: str) -> str:
    return " ".join(lemma.replace("_", " ").replace("-", " ").lower().split())


class WordNet:
    def __init__(self, folder: Path):
        self.folder = folder
        self.reader = _reader(folder)

    @functools.cached_property
    def compounds(self) -> frozenset[str]:
        """Multiword noun lemmas, lower-cased, words separated by one space ("fire hydrant", "double decker")."""
        return frozenset(_spaced(name) for name in self.reader.all_lemma_names("n") if "_" in name or "-" in name)

    @functools.cached_property
    def irregular_plurals(self) -> dict[str, str]:
        """Noun -> its plural, from WordNet's exception list (noun.exc: "mice" -> "mouse")."""
        found: dict[str, str] = {}
        for plural, lemmas in self.reader._exception_map["n"].items():
            for lemma in lemmas:
                found.setdefault(_spaced(lemma), _spaced(plural))
        return found

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019
    def is_creature(self, noun: str) -> bool:
        """Its first (most frequent) sense a person or an animal: a count noun whatever a corpus shows."""
        synsets = self._synsets(noun, "n")
        if not synsets:
            return False
        first = synsets[0]
        if first.lexname() in _CREATURES:
            return True
        return bool(({first.name()} | {s.name() for s in first.closure(lambda s: s.hypernyms())}) & _CREATURE_ROOTS)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one WordNet per process, kept for the process)
    def all_senses(self, word: str, pos: str) -> frozenset[str]:
        return frozenset(s.name() for s in self._synsets(word, pos))

    def _synsets(self, word: str, pos: str) -> list:
        key = _lemma_key(word)
        synsets = self.reader.synsets(key, pos)
        if pos == "a":
            synsets = synsets + [s for s in self.reader.synsets(key, "s") if s not in synsets]
        return synsets

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019
    def senses(self, word: str, pos: str) -> frozenset[str]:
        """The word's usual senses (synset names) as part of speech `pos` ("n", "v", "a")."""
        key = _lemma_key(word)
        synsets = self._synsets(word, pos)
        if not synsets:
            return frozenset()
        lemma_names = {key, self.reader.morphy(key, pos) or key}
        tagged = [s for s in synsets if any(lemma.name().lower() in lemma_names and lemma.count() > 0
                                            for lemma in s.lemmas())]
        return frozenset(s.name() for s in (tagged or synsets[:1]))

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019
    def broader(self, word: str, pos: str) -> frozenset[str]:
        """Synsets more general than the word's senses (adjectives: similar-to and also-see; verbs:
        hypernyms and entailments)."""
        found: set[str] = set()
        for name in self.senses(word, pos):
            synset = self.reader.synset(name)
            if pos == "a":
                found.update(s.name() for s in synset.similar_tos() + synset.also_sees())
            elif pos == "v":
                found.update(s.name() for s in synset.closure(lambda s: s.hypernyms() + s.entailments()))
            else:
                found.update(s.name() for s in synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms()))
        return frozenset(found)

    def relation(self, original: str, candidate: str, pos: str) -> str | None:
        """Why `candidate` may not replace `original` (SYNONYM, HYPERNYM, HYPONYM), or None."""
        a, b = self.senses(original, pos), self.all_senses(candidate, pos)
        if not a or not b:
            return None
        if a & b:
            return SYNONYM
        if pos == "a":  # similar-to and also-see are near-synonyms, in either direction
            return SYNONYM if (b & self.broader(original, pos)) or (a & self.broader(candidate, pos)) else None
        if b & self.broader(original, pos):
            return HYPERNYM
        if a & self.broader(candidate, pos):
            return HYPONYM
        return None

    def index(self, words: Iterable[str], pos: str) -> SenseIndex:
        return SenseIndex(self, list(words), pos)


class SenseIndex:
    """The words of a replacement pool by all their senses and by the synsets broader than their usual ones
    (WordNet.relation's rule), so that the words
    related to one original word are found in time proportional to how many there are, not to the pool."""

    def __init__(self, wordnet: WordNet, words: list[str], pos: str):
        self.wordnet, self.pos = wordnet, pos
        self.by_sense: dict[str, list[int]] = {}
        self.by_broader: dict[str, list[int]] = {}
        for i, word in enumerate(words):
            for name in wordnet.all_senses(word, pos):
                self.by_sense.setdefault(name, []).append(i)
            for name in wordnet.broader(word, pos):
                self.by_broader.setdefault(name, []).append(i)

    def related(self, original: str) -> dict[str, set[int]]:
        """Pool indices that may not replace `original`, by reason (a word has its first reason only)."""
        senses, broader = self.wordnet.senses(original, self.pos), self.wordnet.broader(original, self.pos)
        synonyms = {i for name in senses for i in self.by_sense.get(name, ())}
        if self.pos == "a":
            synonyms |= {i for name in broader for i in self.by_sense.get(name, ())}
            synonyms |= {i for name in senses for i in self.by_broader.get(name, ())}
            return {SYNONYM: synonyms}
        hypernyms = {i for name in broader for i in self.by_sense.get(name, ())} - synonyms
        hyponyms = {i for name in senses for i in self.by_broader.get(name, ())} - synonyms - hypernyms
        return {SYNONYM: synonyms, HYPERNYM: hypernyms, HYPONYM: hyponyms}
