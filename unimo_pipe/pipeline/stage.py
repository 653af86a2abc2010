"""What a stage is: options, a record source, and a function that turns one shard into files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from unimo_pipe.pipeline.config import Source, option, resolve_options
from unimo_pipe.pipeline.errors import ConfigError
from unimo_pipe.pipeline.registry import Registry

if TYPE_CHECKING:
    from unimo_pipe.pipeline.runner import ShardContext


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
    strict: bool = option(False, help="stop at the first bad record instead of counting it", affects_output=False)


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    summary: ClassVar[str]
    options_class: ClassVar[type]
    format_version: ClassVar[int] = 1

    def iter_records(self, options: Any) -> Iterator[Record]:
        """All input records in a deterministic order; the runner cuts them into shards."""
        raise NotImplementedError

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        """Write one shard's outputs under `ctx.work_dir`, accounting every record in `ctx.stats`."""
        raise NotImplementedError

    def check(self, options: Any) -> list[str]:
        """Problems that involve several options together (each field is checked on its own already)."""
        return []

    def models_used(self, options: Any) -> list[str]:
        """Plain words on each model this run uses and whether it is real or a tiny random one."""
        return []

    def finalize(self, options: Any, shard_dirs: list[Path]) -> None:
        """Called once every shard is committed (e.g. to write a merged index); optional."""

    def close(self) -> None:
        """Release what the stage holds across shards (e.g. worker processes); called at the end of every run."""


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


def get_stage(name: str) -> Stage:
    return STAGES.get(name)()


def resolve_stage_options(stage: Stage, sources: list[Source], *, produced: tuple[Path, ...] = ()) -> Any:
    """Options of `stage` from `sources`, with per-field and whole-stage checks; ConfigError lists all."""
    options = resolve_options(stage.options_class, sources, produced=produced)
    problems = stage.check(options)
    if problems:
        raise ConfigError(problems)
    return options
