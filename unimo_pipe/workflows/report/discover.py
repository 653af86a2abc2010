"""What each PATH given to `unimo-pipe report` is: a stage output (its stage.json), a workflow's output root
(a folder of those), one shard folder, or a trainer output (run.json / metrics.jsonl)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.config import load_yaml
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import (
    CONFIG_FILE,
    PARTIAL_SUFFIX,
    SHARDS_DIR,
    STAGE_RECORD,
    STATS_FILE,
    SUMMARY_FILE,
    committed_shard_dirs,
)
from unimo_pipe.pipeline.jsonl import read_json
from unimo_pipe.workflows.training_loop import RUN_RECORD

METRICS_FILE = "metrics.jsonl"  # written by workflows/training_loop.py
FLOW_ORDER = ("import-pairs", "import-corpus", "augment", "extract-regions", "import-features", "embed-text",
              "embed-images", "retrieve", "shard")  # sections follow the data's way through the pipeline


@dataclass(frozen=True, kw_only=True)
class Found:
    """One thing to report on. For a stage output `shards` are its committed shard folders; for a shard
    folder, that folder alone (and `root` is the stage output holding it)."""

    kind: str  # "stage", "shard", "training" or "scores" (an evaluation's JSON file)
    path: Path
    root: Path
    stage: str = ""
    shards: tuple[Path, ...] = ()

    @property
    def complete(self) -> bool:
        return self.kind == "stage" and (self.root / SUMMARY_FILE).is_file()

    def partial_shards(self) -> list[Path]:
        """Shard folders being written, or left by a run that was stopped."""
        if self.kind == "shard":
            return [self.path] if self.path.name.endswith(PARTIAL_SUFFIX) else []
        folder = self.root / SHARDS_DIR
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX))

    def config(self) -> dict[str, Any]:
        """The stage's resolved options with their real paths (config.yaml; stage.json holds fingerprints)."""
        return stage_config(self.root)


def stage_config(root: Path) -> dict[str, Any]:
    """A stage output's resolved options as given (config.yaml); {} when it has none or it is unreadable."""
    path = root / CONFIG_FILE
    try:
        return load_yaml(path) if path.is_file() else {}
    except UserError:
        return {}


def discover(paths: list[Path]) -> tuple[list[Found], list[str]]:
    """Everything found under `paths`, in the pipeline's order, and one line per path that is none of them."""
    found: dict[Path, Found] = {}
    problems = []
    for path in paths:
        hits = _what_is(path)
        if not hits:
            problems.append(_not_recognised(path))
        for hit in hits:
            found.setdefault(hit.path.resolve(), hit)
    return sorted(found.values(), key=_order), problems


def _what_is(path: Path) -> list[Found]:
    if path.is_file() and path.suffix == ".json" and _is_scores_file(path):
        return [Found(kind="scores", path=path, root=path.parent)]
    if not path.is_dir():
        return []
    direct = _as_output(path) or (_as_output(path.parent) if path.name == SHARDS_DIR else None)
    if direct is not None:
        return [direct]
    if (path / STATS_FILE).is_file() or path.name.endswith(PARTIAL_SUFFIX):
        return _as_shard(path)
    return [hit for child in sorted(path.iterdir()) if child.is_dir() and (hit := _as_output(child)) is not None]


def _as_output(path: Path) -> Found | None:
    if (path / STAGE_RECORD).is_file():
        try:
            stage = str(read_json(path / STAGE_RECORD).get("stage", ""))
        except (UserError, AttributeError):
            stage = ""
        return Found(kind="stage", path=path, root=path, stage=stage, shards=tuple(committed_shard_dirs(path)))
    if (path / RUN_RECORD).is_file() or (path / METRICS_FILE).is_file():
        return Found(kind="training", path=path, root=path)
    return None


def _as_shard(path: Path) -> list[Found]:
    root = path.parent.parent
    stage = _as_output(root) if path.parent.name == SHARDS_DIR else None
    name = stage.stage if stage is not None else ""
    committed = (path,) if (path / STATS_FILE).is_file() and not path.name.endswith(PARTIAL_SUFFIX) else ()
    return [Found(kind="shard", path=path, root=root, stage=name, shards=committed)]


def _is_scores_file(path: Path) -> bool:
    from unimo_pipe.workflows.report.training import is_scores

    try:
        return is_scores(read_json(path))
    except (UserError, OSError):
        return False


def _not_recognised(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist: check the path"
    if not path.is_dir():
        return f"{path} is a file, not an output folder (nor an evaluation's scores JSON): pass a stage's --out " \
               "folder, a workflow's output root, a shard folder, a trainer's --out folder or `evaluate --out` FILE"
    return (f"{path} is no stage output, workflow output root, shard folder or trainer output (no {STAGE_RECORD}, "
            f"{RUN_RECORD} or {METRICS_FILE} in it or its subfolders): nothing to show from it")


def _order(found: Found) -> tuple[int, str]:
    rank = FLOW_ORDER.index(found.stage) if found.stage in FLOW_ORDER else len(FLOW_ORDER)
    after = {"training": 1, "scores": 2}
    return (len(FLOW_ORDER) + after[found.kind] if found.kind in after else rank, str(found.path))
