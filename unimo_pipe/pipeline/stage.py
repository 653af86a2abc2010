"""What a stage is: options, a record source, and a lifecycle the runner drives.

    prepare_run(options, run)   once per run, by the process that hands out the shards, before the first one
                                (work every worker then reads from OUT: a vocabulary, upstream embeddings)
    open(options, run)          once per process, before its first shard that needs work (models, indexes)
    process_shard(records, ctx) one shard's files under ctx.work_dir, every record accounted in ctx.stats
    close()                     at the end of every run, finished or not (worker processes)
    finalize(options, dirs)     once every shard is committed (merged stores, manifests); it may run in a
                                process that never opened the stage, so it uses only the committed shards

The runner (pipeline/runner.py) calls these, in this process or in Ray actors (pipeline/ray_executor.py);
a stage never imports either.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unimo_pipe.pipeline.config import Source, option, resolve_options
from unimo_pipe.pipeline.errors import ConfigError, RecordError, UserError
from unimo_pipe.pipeline.progress import Progress
from unimo_pipe.pipeline.registry import Registry
from unimo_pipe.pipeline.sharding import ShardSelection
from unimo_pipe.pipeline.stats import InputProblems, ShardStats

logger = logging.getLogger("unimo_pipe")


@dataclass(frozen=True)
class Record:
    """One unit of input. A record the reader could not make carries `error` (a reason code)."""

    key: str
    value: Any = None
    error: str | None = None
    detail: str = ""


@dataclass
class CommonOptions:
    """Options every stage has: where to write, how to split, and the error policy."""

    out: Path | None = option(None, help="output folder", required=True, affects_output=False, metavar="DIR")
    shard_size: int = option(10_000, help="records per shard (the unit of work and of resume)", minimum=1)
    shard: str | None = option(
        None,
        help="process only shards I, I+N, ... (I/N); default: from RANK/WORLD_SIZE or SLURM_ARRAY_*",
        affects_output=False,
        metavar="I/N",
    )
    overwrite: bool = option(False, help="replace outputs made with a different config", affects_output=False)
    executor: str = option("local", help="where shards run: this process, or actors of a Ray cluster (pip install "
                           "'unimo-pipe[ray]')", choices=("local", "ray"), affects_output=False)
    ray_address: str | None = option(None, help="Ray cluster to join (default: RAY_ADDRESS if set, else a new "
                                     "local instance)", affects_output=False, metavar="HOST:PORT")
    ray_workers: int = option(0, help="stage actors on Ray, each loading the stage's models once (0: as many as "
                              "the cluster's CPUs allow)", minimum=0, affects_output=False)
    cpus_per_worker: float = option(1.0, help="CPUs each Ray actor reserves", minimum=0.0, affects_output=False)
    gpus_per_worker: float = option(0.0, help="GPUs each Ray actor reserves (0: 1 for a stage on GPU where the "
                                    "cluster has GPUs)", minimum=0.0,
                                    affects_output=False)
    strict: bool = option(False, help="stop at the first bad record instead of counting it", affects_output=False)


@dataclass
class RunContext:
    """What a stage gets once per process: facts of the whole run, shared by every shard it processes."""

    out: Path
    config_hash: str  # of the whole run's config, for outputs kept beside the shards
    selection: ShardSelection = field(default_factory=ShardSelection)  # the shards this process runs
    strict: bool = False
    will_run: Callable[[int], bool] = lambda shard: True  # whether this process processes that shard now
    run_upstream: Callable[[Stage, Any], Any] | None = None  # runs another stage whose output this one reads
    problems: InputProblems = field(default_factory=InputProblems)

    def input_problem(self, where: str, reason: str, detail: str = "") -> None:
        """A bad row of a side input (not a record of this stage): counted with its place, or raised if strict."""
        if self.strict:
            raise UserError(f"{where}: {reason} {detail}".rstrip() + " (fix or remove that row, or drop --strict)")
        self.problems.add(where, reason, detail)


class ShardContext:
    """What a stage gets while processing one shard: where to write, and where to count."""

    def __init__(self, *, index: int, work_dir: Path, options: Any, run: RunContext, progress: Progress):
        self.index = index
        self.work_dir = work_dir
        self.options = options
        self.run = run
        self.strict = run.strict
        self.progress = progress
        self.stats = ShardStats(shard=index)

    def path(self, name: str) -> Path:
        return self.work_dir / name

    @contextlib.contextmanager
    def record(self, key: str) -> Iterator[None]:
        """Count the enclosed work as one record: ok, or failed with its reason (re-raised if strict)."""
        try:
            yield
        except RecordError as exc:
            if self.strict:
                raise
            self.stats.fail(key, exc.reason, exc.detail)
            self.progress.update(failed=1)
        except Exception as exc:
            if self.strict:
                raise
            self.stats.fail(key, type(exc).__name__, str(exc))
            self.progress.update(failed=1)
        else:
            self.stats.succeed()
            self.progress.update(1)


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    summary: ClassVar[str]
    options_class: ClassVar[type]
    format_version: ClassVar[int] = 1

    def iter_records(self, options: Any) -> Iterator[Record]:
        """All input records in a deterministic order; the runner cuts them into shards."""
        raise NotImplementedError

    def prepare_run(self, options: Any, run: RunContext) -> None:
        """Work done once for the whole run before any shard, whose results every worker's `open` reads
        from OUT; optional."""

    def open(self, options: Any, run: RunContext) -> None:
        """Set up what every shard needs (models, indexes, side inputs); optional."""

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        """Write one shard's outputs under `ctx.work_dir`, accounting every record in `ctx.stats`."""
        raise NotImplementedError

    def check(self, options: Any) -> list[str]:
        """Problems that involve several options together (each field is checked on its own already)."""
        return []

    def wants_gpu(self, options: Any) -> bool:
        """Whether this run can use a GPU (a Ray actor of it then reserves one where the cluster has them)."""
        return getattr(options, "device", "cpu") != "cpu"

    def models_used(self, options: Any) -> list[str]:
        """Plain words on each model this run uses and whether it is real or a tiny random one."""
        return []

    def finalize(self, options: Any, shard_dirs: list[Path]) -> None:
        """Called once every shard is committed (e.g. to write a merged index); optional."""

    def close(self) -> None:
        """Release what the stage holds across shards (e.g. worker processes); called at the end of every run."""


EXECUTOR_OPTIONS = ("executor", "ray_address", "ray_workers", "cpus_per_worker", "gpus_per_worker")


def executor_options(options: Any) -> dict[str, Any]:
    """Where `options`' stage runs, for a stage it runs in turn (retrieve's embeddings) to run there too."""
    return {name: getattr(options, name) for name in EXECUTOR_OPTIONS}


STAGES = Registry("stage")
STAGES.register_lazy("extract-regions", "unimo_pipe.stages.extract_regions:ExtractRegions")
STAGES.register_lazy("import-features", "unimo_pipe.stages.import_features:ImportFeatures")
STAGES.register_lazy("import-pairs", "unimo_pipe.stages.import_pairs:ImportPairs")
STAGES.register_lazy("import-corpus", "unimo_pipe.stages.import_corpus:ImportCorpus")
STAGES.register_lazy("augment", "unimo_pipe.stages.augment:Augment")
STAGES.register_lazy("embed-text", "unimo_pipe.stages.embed_text:EmbedText")
STAGES.register_lazy("embed-images", "unimo_pipe.stages.embed_images:EmbedImages")
STAGES.register_lazy("shard", "unimo_pipe.stages.shard:Shard")
STAGES.register_lazy("retrieve", "unimo_pipe.stages.retrieve:Retrieve")
STAGES.register_lazy("generate", "unimo_pipe.stages.generate:Generate")


def get_stage(name: str) -> Stage:
    return STAGES.get(name)()


def resolve_stage_options(stage: Stage, sources: list[Source], *, produced: tuple[Path, ...] = ()) -> Any:
    """Options of `stage` from `sources`, with per-field and whole-stage checks; ConfigError lists all."""
    options = resolve_options(stage.options_class, sources, produced=produced)
    problems = stage.check(options)
    if problems:
        raise ConfigError(problems)
    return options
