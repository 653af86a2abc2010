"""Scene graphs and hard negatives for whole lists of captions, in this process or in worker processes.

With `processes` > 1 each worker process loads its own spaCy pipeline and negative generator once, then
parses, builds the graphs and makes the negatives of whole chunks of captions, and sends back finished
JSON, so the work grows with the processes. spaCy's own `n_process` would parse in workers too, but it
sends every Doc back to be rebuilt in the parent, where graphs and negatives would then be made one
caption at a time: one core's worth of generation would cap the rate however many cores parse.

Workers are started with "spawn": the stage may have torch threads running (back-translation), and
forking a process with threads can deadlock. Results do not depend on the number of processes: each
caption's negatives are seeded by its key.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary
from unimo_pipe.models.scene_graph import SceneGraphParser, parse_doc
from unimo_pipe.pipeline.errors import UserError

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


@functools.lru_cache(maxsize=2)
def shared_parser(model: str, batch_size: int) -> SceneGraphParser:
    """One loaded spaCy pipeline per model and process. Its objects live as long as the process, so they are
    frozen out of the garbage collector: full collections walking them made graph building ~2x slower."""
    parser = SceneGraphParser(model=model, batch_size=batch_size)
    gc.freeze()
    return parser


def vocabulary_of(texts: list[str], *, spacy_model: str, batch_size: int) -> Vocabulary:
    vocabulary = Vocabulary()
    for doc, graph in shared_parser(spacy_model, batch_size).parse_many(texts):
        vocabulary.add(doc, graph)
    return vocabulary


class NegativeMaker:
    """Parses chunks of captions and makes their negatives: in-process, or once per worker process."""

    def __init__(self, *, spacy_model: str, batch_size: int, vocabulary: Vocabulary, negatives: int, seed: int):
        self.parser = shared_parser(spacy_model, batch_size)
        self.generator = NegativeGenerator(vocabulary=vocabulary, negatives=negatives, seed=seed)
        gc.freeze()  # the vocabulary and the generator's pools live as long as the parser

    def __call__(self, jobs: list[CaptionJob]) -> list[CaptionNegatives]:
        import orjson

        docs = self.parser.nlp.pipe([job.text for job in jobs], batch_size=self.parser.batch_size)
        done = []
        for doc, job in zip(docs, jobs, strict=True):
            try:
                graph = parse_doc(doc, job.text)
                negatives = self.generator.generate(doc, graph, key=job.key, forbidden=job.forbidden)
                done.append(CaptionNegatives(orjson.dumps(graph.to_dict()), orjson.dumps(negatives), len(negatives),
                                             bool(graph.objects)))
            except Exception as exc:  # one bad caption is counted by the caller, never the end of the run
                done.append(CaptionNegatives(b"null", b"[]", 0, False, f"{type(exc).__name__}: {exc}"))
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
                 batch_size: int = 256, processes: int = 1):
        self.options = {"spacy_model": spacy_model, "batch_size": batch_size, "vocabulary": vocabulary,
                        "negatives": negatives, "seed": seed}
        self.batch_size = batch_size
        self.processes = processes
        self._maker: NegativeMaker | None = None
        self._pool: Executor | None = None

    def run(self, jobs: Sequence[CaptionJob]) -> list[CaptionNegatives]:
        chunks = [list(jobs[i : i + self.batch_size]) for i in range(0, len(jobs), self.batch_size)]
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
                            "a smaller --batch-size; committed shards are kept") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def build_vocabulary(texts: list[str], *, spacy_model: str, batch_size: int = 256, processes: int = 1) -> Vocabulary:
    """Object, attribute and relation frequencies of the captions, parsed over `processes` processes."""
    count = functools.partial(vocabulary_of, spacy_model=spacy_model, batch_size=batch_size)
    vocabulary = Vocabulary()
    for part in _map_chunks(count, texts, chunk_size=batch_size * 4, processes=processes):
        vocabulary.merge(part)  # in input order, so ties keep their first-seen order whatever `processes` is
    return vocabulary


def _map_chunks(function: Callable[[list[T]], R], items: list[T], *, chunk_size: int, processes: int
                ) -> Iterator[R]:
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    if processes == 1 or len(chunks) < 2:
        yield from map(function, chunks)
        return
    with _spawn_pool(min(processes, len(chunks))) as pool:
        yield from pool.map(function, chunks)


def _spawn_pool(processes: int, **kwargs) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), **kwargs)
