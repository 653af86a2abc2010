"""Scene graphs and hard negatives for whole lists of captions, in this process or in worker processes.

With `processes` > 1 each worker process loads its own spaCy pipeline and negative generator once, then
parses, builds the graphs and makes the negatives of whole chunks of captions, and sends back finished
JSON, so the work grows with the processes. spaCy's own `n_process` would parse in workers too, but it
sends every Doc back to be rebuilt in the parent, where graphs and negatives would then be made one
caption at a time: one core's worth of generation would cap the rate however many cores parse.

Workers are started with "spawn": the stage may have torch threads running (back-translation), and
forking a process with threads can deadlock. Results do not depend on the number of processes: each
caption's negatives are seeded by its key.

The corpus vocabulary needs every caption parsed before the first negative is made, so the stage parses
each caption twice unless the first parse is kept: `ParseCache` keeps it on disk (spaCy's DocBin, ~35 µs
a caption each way against ~1.2 ms for a parse), one file per batch of captions as the negatives pass
will see them.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.sharding import chunk

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class CaptionJob:
    key: str  # seeds the caption's negatives
    text: str
    forbidden: frozenset[str] = frozenset()  # texts no negative may equal (the caption's positives)


@dataclass(frozen=True)
class CaptionNegatives:
    """One caption's scene graph and negatives, as JSON ready to embed in an output line."""

    graph_json: bytes
    negatives_json: bytes
    negatives: int
    has_objects: bool
    error: str | None = None  # "ExceptionName: message" when this caption could not be done
    parse_reused: bool = False  # its parse came from the ParseCache
    excluded: tuple[tuple[str, int], ...] = ()  # replacements left out, by reason (synonym, compound, ...)


@dataclass(frozen=True)
class WordKnowledge:
    """What the parse and the negatives know of words: WordNet's folder (None: the curated lexicon only),
    and whether the lexicon's attribute words join the corpus's."""

    wordnet: Path | None = None
    lexicon_words: bool = False

    def load(self):
        """The WordNet of this process, or None."""
        from unimo_pipe.models import wordnet

        return wordnet.load(self.wordnet) if self.wordnet is not None else None

    def compounds(self) -> frozenset[str]:
        """Multiword nouns that are one object (none without WordNet)."""
        return _compounds(self.wordnet)


@functools.lru_cache(maxsize=2)
def _compounds(folder: Path | None) -> frozenset[str]:
    from unimo_pipe.models import wordnet
    from unimo_pipe.models.lexicon import EXTRA_COMPOUNDS

    return wordnet.load(folder).compounds | EXTRA_COMPOUNDS if folder is not None else frozenset()


# What the scene graph and the negatives read from a Doc (DocBin adds the spaces); the rest is not kept.
_KEPT_ATTRIBUTES = ["ORTH", "TAG", "POS", "DEP", "HEAD", "LEMMA", "MORPH"]


@dataclass(frozen=True)
class ParseCache:
    """spaCy parses of caption batches kept on disk from the vocabulary pass to the negatives pass.

    A file is named by a hash of the model and the batch's texts, and its Docs are checked against the
    texts when read, so a batch can only ever get its own parse. Read files are deleted; anything that
    cannot be read is parsed again.
    """

    folder: Path
    model: str  # the spaCy pipeline's name and version (model_identity): a new version parses differently

    def save(self, texts: list[str], docs: list) -> None:
        from spacy.tokens import DocBin

        path = self._path(texts)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # not synced: a lost file is parsed again
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(DocBin(attrs=_KEPT_ATTRIBUTES, docs=docs).to_bytes())
            os.replace(partial, path)
        except OSError:  # e.g. a full disk: these captions are parsed again instead
            with contextlib.suppress(OSError):
                partial.unlink()

    def load(self, texts: list[str], vocab) -> list | None:
        """The batch's Docs, or None when they were not kept (or cannot be read)."""
        from spacy.tokens import DocBin

        try:
            data = self._path(texts).read_bytes()
        except OSError:
            return None
        try:
            docs = list(DocBin().from_bytes(data).get_docs(vocab))
        except Exception:  # a damaged file costs a parse, never the run
            return None
        return docs if [doc.text for doc in docs] == texts else None

    def discard(self, texts: list[str]) -> None:
        self._path(texts).unlink(missing_ok=True)

    def remove_folder_if_empty(self) -> None:
        with contextlib.suppress(OSError):  # not empty: batches of a run that stopped early, kept for its resume
            self.folder.rmdir()

    def _path(self, texts: list[str]) -> Path:
        import orjson

        digest = hashlib.blake2b(orjson.dumps([self.model, texts]), digest_size=16).hexdigest()
        return self.folder / f"{digest}.spacy"


def in_batches(items: Sequence[T], size: int) -> list[list[T]]:
    """Consecutive batches of `size` items: how NegativeWorkers batches a shard's captions, so a vocabulary
    pass that batches the same way keeps parses the negatives pass will ask for."""
    return [batch for _, batch in chunk(items, size)]


@dataclass(frozen=True)
class VocabularyBatch:
    texts: list[str]
    keep_parse: bool = False  # the negatives pass will get these texts as one batch: keep their parse


@functools.lru_cache(maxsize=2)
def shared_parser(model: str, batch_size: int) -> SceneGraphParser:
    """One loaded spaCy pipeline per model and process. Its objects live as long as the process, so they are
    frozen out of the garbage collector: full collections walking them made graph building ~2x slower."""
    parser = SceneGraphParser(model=model, batch_size=batch_size)
    gc.freeze()
    return parser


def model_identity(spacy_model: str, batch_size: int) -> str:
    """The spaCy pipeline as loaded: its name or path, its package name and version, and spaCy's version."""
    import spacy

    meta = shared_parser(spacy_model, batch_size).nlp.meta
    return f"{spacy_model} {meta.get('lang')}_{meta.get('name')} {meta.get('version')} spacy {spacy.__version__}"


def vocabulary_of(batches: list[VocabularyBatch], *, spacy_model: str, batch_size: int,
                  parse_cache: ParseCache | None = None, knowledge: WordKnowledge = WordKnowledge()) -> Vocabulary:
    vocabulary = Vocabulary()
    parser, compounds = shared_parser(spacy_model, batch_size), knowledge.compounds()
    for batch in batches:
        docs = list(parser.nlp.pipe(batch.texts, batch_size=parser.batch_size))
        for doc, text in zip(docs, batch.texts, strict=True):
            vocabulary.add(doc, parse_doc(doc, text, compounds))
        if batch.keep_parse and parse_cache is not None:
            parse_cache.save(batch.texts, docs)
    return vocabulary


class NegativeMaker:
    """Parses chunks of captions and makes their negatives: in-process, or once per worker process."""

    def __init__(self, *, spacy_model: str, batch_size: int, vocabulary: Vocabulary, negatives: int, seed: int,
                 parse_cache: ParseCache | None = None, knowledge: WordKnowledge = WordKnowledge(),
                 mix: dict[str, float] | None = None):
        self.parser = shared_parser(spacy_model, batch_size)
        self.compounds = knowledge.compounds()
        self.generator = NegativeGenerator(vocabulary=vocabulary, negatives=negatives, seed=seed,
                                           wordnet=knowledge.load(), lexicon_words=knowledge.lexicon_words, mix=mix)
        self.parse_cache = parse_cache
        gc.freeze()  # the vocabulary and the generator's pools live as long as the parser

    def __call__(self, jobs: list[CaptionJob]) -> list[CaptionNegatives]:
        import orjson

        texts = [job.text for job in jobs]
        docs = self.parse_cache.load(texts, self.parser.nlp.vocab) if self.parse_cache is not None else None
        reused = docs is not None
        if docs is None:
            docs = self.parser.nlp.pipe(texts, batch_size=self.parser.batch_size)
        done = []
        for doc, job in zip(docs, jobs, strict=True):
            try:
                graph = parse_doc(doc, job.text, self.compounds)
                negatives = self.generator.generate(doc, graph, key=job.key, forbidden=job.forbidden)
                done.append(CaptionNegatives(orjson.dumps(graph.to_dict()), orjson.dumps(negatives), len(negatives),
                                             bool(graph.objects), parse_reused=reused,
                                             excluded=tuple(self.generator.excluded.items())))
            except Exception as exc:  # one bad caption is counted by the caller, never the end of the run
                done.append(CaptionNegatives(b"null", b"[]", 0, False, f"{type(exc).__name__}: {exc}",
                                             parse_reused=reused))
        if reused:
            self.parse_cache.discard(texts)
        return done


_maker_in_worker: NegativeMaker | None = None


def _start_worker(options: dict) -> None:
    global _maker_in_worker
    _maker_in_worker = NegativeMaker(**options)


def _make_in_worker(jobs: list[CaptionJob]) -> list[CaptionNegatives]:
    assert _maker_in_worker is not None, "worker started without _start_worker"
    return _maker_in_worker(jobs)


class NegativeWorkers:
    """Scene graphs and negatives of caption lists, in order, over `processes` processes (1: this one).

    The worker processes start at the first `run` and stay until `close`, so their start-up (loading
    spaCy, ~2 s) is paid once per stage run rather than per shard.
    """

    def __init__(self, *, spacy_model: str, vocabulary: Vocabulary, negatives: int, seed: int,
                 batch_size: int = 256, processes: int = 1, parse_cache: ParseCache | None = None,
                 knowledge: WordKnowledge = WordKnowledge(), mix: dict[str, float] | None = None):
        self.options = {"spacy_model": spacy_model, "batch_size": batch_size, "vocabulary": vocabulary,
                        "negatives": negatives, "seed": seed, "parse_cache": parse_cache, "knowledge": knowledge,
                        "mix": mix}
        self.batch_size = batch_size
        self.processes = processes
        self._maker: NegativeMaker | None = None
        self._pool: Executor | None = None

    def run(self, jobs: Sequence[CaptionJob]) -> list[CaptionNegatives]:
        chunks = in_batches(jobs, self.batch_size)
        if self.processes == 1:
            if self._maker is None:
                self._maker = NegativeMaker(**self.options)
            return [done for chunk in chunks for done in self._maker(chunk)]
        if self._pool is None:
            self._pool = _spawn_pool(self.processes, initializer=_start_worker, initargs=(self.options,))
        try:
            return [done for chunk_done in self._pool.map(_make_in_worker, chunks) for done in chunk_done]
        except BrokenProcessPool:
            self._pool = None
            raise UserError("a scene-graph worker process died (out of memory?): rerun with fewer --processes or "
                            "a smaller --batch-size; committed shards are kept (a Python script that runs augment "
                            "with --processes needs an `if __name__ == \"__main__\":` guard)") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def build_vocabulary(texts: list[str], *, spacy_model: str, batch_size: int = 256, processes: int = 1,
                     knowledge: WordKnowledge = WordKnowledge()) -> Vocabulary:
    """Object, attribute and relation frequencies of the captions, parsed over `processes` processes."""
    batches = [VocabularyBatch(texts) for texts in in_batches(texts, batch_size)]
    return build_vocabulary_of_batches(batches, spacy_model=spacy_model, batch_size=batch_size,
                                       processes=processes, knowledge=knowledge)


def build_vocabulary_of_batches(batches: list[VocabularyBatch], *, spacy_model: str, batch_size: int = 256,
                                processes: int = 1, parse_cache: ParseCache | None = None,
                                knowledge: WordKnowledge = WordKnowledge()) -> Vocabulary:
    """build_vocabulary of the batches' captions, keeping in `parse_cache` the parses of the batches that ask."""
    count = functools.partial(vocabulary_of, spacy_model=spacy_model, batch_size=batch_size, parse_cache=parse_cache,
                              knowledge=knowledge)
    vocabulary = Vocabulary()
    for part in _map_chunks(count, batches, chunk_size=4, processes=processes):
        vocabulary.merge(part)  # in input order, so ties keep their first-seen order whatever `processes` is
    return vocabulary


def _map_chunks(function: Callable[[list[T]], R], items: list[T], *, chunk_size: int, processes: int
                ) -> Iterator[R]:
    chunks = in_batches(items, chunk_size)
    if processes == 1 or len(chunks) < 2:
        yield from map(function, chunks)
        return
    with _spawn_pool(min(processes, len(chunks))) as pool:
        yield from pool.map(function, chunks)


def _spawn_pool(processes: int, **kwargs) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), **kwargs)
