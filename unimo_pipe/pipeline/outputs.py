"""Reading a finished stage's output folder, and merging its per-shard files into one of each."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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

    Returns {file name: rows or entries merged}.
    """
    shards = complete_shard_dirs(out)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"merge destination {dest} is not empty: choose a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    merged: dict[str, int] = {}
    for entry in sorted(shards[0].iterdir()) if shards else []:
        if entry.name == STATS_FILE:
            continue
        if entry.suffix == ".jsonl":
            merged[entry.name] = _concatenate(shards, entry.name, dest / entry.name)
        elif (entry / "data.mdb").is_file():
            merged[entry.name] = _merge_lmdb(shards, entry.name, dest / entry.name)
    stage = read_json(out / SUMMARY_FILE)["stage"]
    write_json_atomic(dest / MERGED_FROM_FILE, {"source": str(out), "stage": stage, "shards": len(shards)})
    return merged


def _concatenate(shards: list[Path], name: str, target: Path) -> int:
    lines = 0
    with target.open("wb") as dst:
        for shard in shards:
            with (shard / name).open("rb") as src:
                shutil.copyfileobj(src, dst)
            lines += sum(1 for _ in (shard / name).open("rb"))
    return lines


def _merge_lmdb(shards: list[Path], name: str, target: Path) -> int:
    with LmdbWriter(target, commit_every=1024) as writer:
        for shard in shards:
            for key, value in LmdbReader(shard / name).items_raw():
                writer.put_raw(key, value)
    return writer.written
