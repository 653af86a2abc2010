"""Reading a finished stage's output folder, and merging its per-shard files into one of each."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import MERGED_FROM_FILE, STATS_FILE, SUMMARY_FILE, committed_shard_dirs
from unimo_pipe.pipeline.jsonl import iter_jsonl, read_json, write_json_atomic
from unimo_pipe.pipeline.lmdb_store import LmdbReader, LmdbWriter


def complete_shard_dirs(out: Path) -> list[Path]:
    """Committed shard folders of a stage output, refusing an output that is not finished."""
    summary = out / SUMMARY_FILE
    if not summary.is_file():
        if not out.exists():
            raise UserError(f"stage output {out} does not exist: run that stage first")
        done = len(committed_shard_dirs(out))
        raise UserError(f"stage output {out} is incomplete ({done} shards committed): rerun that stage to finish it")
    return committed_shard_dirs(out)


def iter_output_rows(out: Path, file_name: str, *, required: tuple[str, ...] = ("id",)
                     ) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(where, row, problem) for every line of `file_name` across the shards of a finished stage output, in
    shard order; `where` is "FILE:LINE", and a line that is not a JSON object with the `required` fields
    comes with its problem (and no row) so the reader can count it."""
    for shard in complete_shard_dirs(out):
        path = shard / file_name
        if not path.is_file():
            raise UserError(f"{path} is missing from a finished stage output: rerun that stage into {out} "
                            "with --overwrite")
        for line_number, row, problem in iter_jsonl(path):
            if not problem and not (isinstance(row, dict) and all(name in row for name in required)):
                problem = "malformed_row"
            yield f"{path}:{line_number}", (None if problem else row), problem


def iter_output_jsonl(out: Path, file_name: str) -> Iterator[dict[str, Any]]:
    """Rows of `file_name` across all shards of a finished stage output; a corrupt row is an error."""
    for where, row, problem in iter_output_rows(out, file_name, required=()):
        if problem:
            raise UserError(f"{where} is corrupt ({problem}): rerun the stage with --overwrite")
        yield row


def merge_outputs(out: Path, dest: Path) -> dict[str, int]:
    """Concatenate every per-shard JSONL file and merge every per-shard LMDB into `dest`.

    A shard need not hold every file. Anything else is refused before any writing, and `dest` appears
    whole or not at all: it is written in a temporary sibling folder, renamed at the end.
    Returns {file name: rows or entries merged}.
    """
    shards = complete_shard_dirs(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"merge destination {dest} is not an empty folder: choose a new folder")
    plan = _merge_plan(out, shards)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".merging", dir=dest.parent))
    try:
        merged = {name: merge(shards, name, staging / name) for name, merge in plan.items()}
        stage = read_json(out / SUMMARY_FILE)["stage"]
        write_json_atomic(staging / MERGED_FROM_FILE, {"source": str(out), "stage": stage, "shards": len(shards)})
        os.replace(staging, dest)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return merged


def _merge_plan(out: Path, shards: list[Path]) -> dict[str, Callable[[list[Path], str, Path], int]]:
    """How to merge each file name found in any shard; a name that is neither JSONL nor LMDB is refused."""
    kinds: dict[str, set[str]] = {}
    for shard in shards:
        for entry in shard.iterdir():
            if entry.name != STATS_FILE:
                kinds.setdefault(entry.name, set()).add(_merge_kind(entry))
    refused = sorted(name for name, found in kinds.items() if len(found) > 1 or "other" in found)
    if refused:
        raise UserError(f"cannot merge {', '.join(refused)} of {out}: only per-shard JSONL files and LMDB stores "
                        "merge; read those from the shard folders instead")
    merges = {"jsonl": _concatenate, "lmdb": _merge_lmdb}
    return {name: merges[found.pop()] for name, found in sorted(kinds.items())}


def _merge_kind(entry: Path) -> str:
    if entry.suffix == ".jsonl" and entry.is_file():
        return "jsonl"
    if (entry / "data.mdb").is_file():
        return "lmdb"
    return "other"


def _concatenate(shards: list[Path], name: str, target: Path) -> int:
    lines = 0
    with target.open("wb") as dst:
        for path in (shard / name for shard in shards):
            if path.is_file():
                with path.open("rb") as src:
                    shutil.copyfileobj(src, dst)
                with path.open("rb") as src:
                    lines += sum(1 for _ in src)
    return lines


def _merge_lmdb(shards: list[Path], name: str, target: Path) -> int:
    with LmdbWriter(target, commit_every=1024) as writer:
        for path in (shard / name for shard in shards):
            if (path / "data.mdb").is_file():
                for key, value in LmdbReader(path).items_raw():
                    writer.put_raw(key, value)
    return writer.written
