"""The shard runner: cut inputs into shards, skip committed ones, commit each new one atomically.

Layout of a stage's output folder:
    OUT/stage.json        which stage and config hash made this folder
    OUT/config.yaml       the resolved options, for people
    OUT/shards/00000/     one committed shard: the stage's files plus stats.json
    OUT/shards/00001.partial/   a shard being written (removed and redone on resume)
    OUT/summary.json      totals, once every shard is committed

A shard directory is renamed from `.partial` only after its stats.json is written, so a killed run
leaves either a whole shard or none: a rerun redoes the partial one and nothing is lost or doubled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unimo_pipe.pipeline.config import config_hash, options_to_dict, output_affecting_dict
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import (
    CONFIG_FILE,
    FINALIZE_LOCK,
    INPUT_PROBLEMS_FILE,
    LOCK_PREFIX,
    PARTIAL_SUFFIX,
    SHARDS_DIR,
    STAGE_RECORD,
    STATS_FILE,
    SUMMARY_FILE,
    committed_shard_dirs,
    is_committed,
    selection_lock_name,
    shard_dir,
)
from unimo_pipe.pipeline.jsonl import json_text, read_json, write_json_atomic, write_text_if_changed
from unimo_pipe.pipeline.locks import LockBusy, describe_holder, hold_lock
from unimo_pipe.pipeline.progress import Progress
from unimo_pipe.pipeline.sharding import ShardSelection, chunk, resolve_selection
from unimo_pipe.pipeline.stage import Record, RunContext, ShardContext, Stage
from unimo_pipe.pipeline.stats import merge_stats

logger = logging.getLogger("unimo_pipe")


@dataclass
class RunResult:
    stage: str
    out_dir: Path
    shards_total: int
    shards_run: int
    shards_skipped: int
    totals: dict[str, Any]
    complete: bool
    elapsed_s: float

    @property
    def records_per_s(self) -> float:
        """Records per second of shard processing, over every committed shard."""
        return self.totals.get("records_per_s") or 0.0


def run_stage(stage: Stage, options: Any, *, env: dict[str, str] | None = None) -> RunResult:
    """Run every shard this process owns that is not committed yet; return what happened.

    A second process on the same output folder and shard selection is refused while this one runs.
    """
    started = time.perf_counter()
    selection = resolve_selection(options.shard, env)
    chash = config_hash(stage.name, stage.format_version, options)
    with _selection_lock(options.out, selection):
        return _run_owned_shards(stage, options, selection, chash, started)


@contextlib.contextmanager
def _selection_lock(out: Path, selection: ShardSelection) -> Iterator[None]:
    _refuse_file_out(out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_lock(out / selection_lock_name(selection.index, selection.count)))
        except LockBusy as busy:
            raise UserError(f"{out} is being written by another run of shards {selection} "
                            f"({describe_holder(busy.holder)}): wait for it to finish, or choose another --out"
                            ) from None
        yield


class LocalExecutor:
    """Runs the shards in this process, one after the other."""

    def run(self, stage: Stage, options: Any, work: Iterator[tuple[int, list[Record]]], run_context: RunContext,
            progress: Progress) -> int:
        """Process every (index, records) of `work`; the number of shards committed."""
        done = 0
        try:
            for index, records in work:
                if done == 0:  # only a process with work to do loads models and side inputs
                    prepare_run(stage, options, run_context)
                    open_stage(stage, options, run_context)
                run_shard(stage, options, index, records, run_context, progress)
                done += 1
        finally:
            stage.close()
        return done


def executor_for(options: Any):
    """The executor `--executor` names (the Ray one is imported only when asked for)."""
    if getattr(options, "executor", "local") == "ray":
        from unimo_pipe.pipeline.ray_executor import RayExecutor

        return RayExecutor.from_options(options)
    return LocalExecutor()


def _run_owned_shards(stage: Stage, options: Any, selection: ShardSelection, chash: str, started: float
                      ) -> RunResult:
    out: Path = options.out
    executor = executor_for(options)
    prepare_output_dir(stage, options, chash)
    remove_partial_shards(out, selection)
    run_context = RunContext(out=out, config_hash=chash, selection=selection, strict=options.strict,
                             will_run=lambda index: selection.owns(index) and not is_committed(out, index),
                             run_upstream=lambda upstream, upstream_options: run_stage(upstream, upstream_options,
                                                                                       env={}))
    progress = Progress(f"{stage.name} [{selection}]")
    counts = {"total": 0, "skipped": 0}

    def work() -> Iterator[tuple[int, list[Record]]]:
        for index, records in chunk(stage.iter_records(options), options.shard_size):
            counts["total"] += 1
            if not selection.owns(index):
                continue
            if is_committed(out, index):
                counts["skipped"] += 1
                continue
            yield index, records

    try:
        run = executor.run(stage, options, work(), run_context, progress)
    finally:
        progress.close()
    total, skipped = counts["total"], counts["skipped"]
    if total == 0:
        logger.warning("%s: the inputs hold no records, so %s is empty: check the input files", stage.name, out)
    committed = committed_shard_dirs(out)
    complete = len(committed) == total
    totals = merge_stats([read_json(d / STATS_FILE) for d in committed])
    if complete:
        with hold_lock(out / FINALIZE_LOCK, wait=True):  # workers finishing together finalize one at a time
            _finalize_unless_done(stage, options, chash, total)
    logger.info("%s: %d shards (%d run, %d already done) in %s", stage.name, total, run, skipped, out)
    return RunResult(stage.name, out, total, run, skipped, totals, complete, time.perf_counter() - started)


def _finalize_unless_done(stage: Stage, options: Any, chash: str, total: int) -> None:
    """Finalize and write the summary, unless a summary newer than every committed shard says it is done."""
    out: Path = options.out
    committed = committed_shard_dirs(out)
    if _summary_covers(out, committed):
        return
    stage.finalize(options, committed)
    totals = merge_stats([read_json(d / STATS_FILE) for d in committed])
    summary = {"stage": stage.name, "config_hash": chash, "shards": total, "complete": True, **totals}
    if (out / INPUT_PROBLEMS_FILE).is_file():
        summary["input_problems"] = read_json(out / INPUT_PROBLEMS_FILE)
    write_json_atomic(out / SUMMARY_FILE, summary)


def _summary_covers(out: Path, committed: list[Path]) -> bool:
    # A summary is only written once every shard is committed, so one at least as new as the newest shard
    # saw them all: another worker finalized. A finalize again would merge already-merged (removed) stores.
    summary = out / SUMMARY_FILE
    if not summary.is_file():
        return False
    newest_shard = max((os.stat(d / STATS_FILE).st_mtime_ns for d in committed), default=0)
    return summary.stat().st_mtime_ns >= newest_shard


def prepare_run(stage: Stage, options: Any, run_context: RunContext) -> None:
    """`stage.prepare_run`: once per run, in the process that hands out the shards, before the first one."""
    stage.prepare_run(options, run_context)


def open_stage(stage: Stage, options: Any, run_context: RunContext) -> None:
    """`stage.open`, then keep what it found wrong in side inputs (the same in every process of the run)."""
    stage.open(options, run_context)
    problems = run_context.problems
    if problems.count:
        write_json_atomic(options.out / INPUT_PROBLEMS_FILE, problems.to_dict())
        example = problems.examples[0]
        logger.warning("%s: %d bad rows in side inputs were skipped (%s), e.g. %s (%s); listed in %s",
                       stage.name, problems.count, ", ".join(f"{k}: {v}" for k, v in problems.reasons.items()),
                       example["where"], example["reason"], options.out / INPUT_PROBLEMS_FILE)
    else:
        (options.out / INPUT_PROBLEMS_FILE).unlink(missing_ok=True)


def run_shard(stage: Stage, options: Any, index: int, records: list[Record], run_context: RunContext,
              progress: Progress) -> dict[str, Any]:
    """Process one shard into OUT/shards/NNNNN.partial, then commit it (stats.json, rename); its stats."""
    final_dir = shard_dir(options.out, index)
    work_dir = final_dir.with_name(final_dir.name + PARTIAL_SUFFIX)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    ctx = ShardContext(index=index, work_dir=work_dir, options=options, run=run_context, progress=progress)
    ctx.stats.records = len(records)
    started = time.perf_counter()
    good = _count_unreadable(records, ctx)
    stage.process_shard(good, ctx)
    elapsed = time.perf_counter() - started
    if ctx.stats.accounted != len(records):
        raise RuntimeError(
            f"stage {stage.name} accounted {ctx.stats.accounted} of {len(records)} records in shard {index}"
        )
    stats = ctx.stats.to_dict(elapsed_s=elapsed, config_hash=run_context.config_hash)
    write_json_atomic(work_dir / STATS_FILE, stats)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(work_dir, final_dir)
    return stats


def _count_unreadable(records: list[Record], ctx: ShardContext) -> list[Record]:
    """Records the reader could not make are failures of this shard; the rest go to the stage."""
    good = []
    for record in records:
        if record.error is None:
            good.append(record)
            continue
        if ctx.strict:
            raise UserError(f"bad input record {record.key}: {record.error} {record.detail}".rstrip())
        ctx.stats.fail(record.key, record.error, record.detail)
        ctx.progress.update(failed=1)
    return good


def prepare_output_dir(stage: Stage, options: Any, chash: str) -> None:
    """Refuse to mix outputs of another stage or config (unless --overwrite); record this config."""
    out: Path = options.out
    _refuse_file_out(out)
    record_path = out / STAGE_RECORD
    affecting = output_affecting_dict(options)
    if record_path.exists():
        previous = read_json(record_path)
        if previous.get("stage") != stage.name:
            raise UserError(f"{out} holds output of stage {previous.get('stage')!r}: choose another --out")
        if previous.get("config_hash") != chash:
            _handle_config_change(out, previous, affecting, options.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage.name, "format": stage.format_version, "config_hash": chash, "options": affecting}
    write_text_if_changed(record_path, json_text(record))
    write_text_if_changed(out / CONFIG_FILE,
                          yaml.safe_dump({"stage": stage.name, **options_to_dict(options)}, sort_keys=False))


def _refuse_file_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose a folder path")


def _handle_config_change(out: Path, previous: dict, affecting: dict, overwrite: bool) -> None:
    if not committed_shard_dirs(out):
        return
    if not overwrite:
        old = previous.get("options", {})
        changed = sorted(k for k in set(old) | set(affecting) if old.get(k) != affecting.get(k))
        what = ", ".join(changed) if changed else "stage version"
        raise UserError(
            f"{out} holds shards made with a different config (changed: {what}): "
            "use another --out, or --overwrite to replace them"
        )
    logger.warning("--overwrite: removing every output of the previous config in %s", out)
    for entry in out.iterdir():  # shards, summary, and merged outputs (feature store, manifest, sub-stages)
        if entry.name in (STAGE_RECORD, CONFIG_FILE) or entry.name.startswith(LOCK_PREFIX):
            continue  # lock files stay: other processes may hold them
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()


def remove_partial_shards(out: Path, selection: ShardSelection) -> None:
    """Leftovers of a killed run (only this process's shards: others may be writing theirs)."""
    root = out / SHARDS_DIR
    if not root.is_dir():
        return
    for partial in root.glob("*" + PARTIAL_SUFFIX):
        index_text = partial.name.removesuffix(PARTIAL_SUFFIX)
        if index_text.isdigit() and selection.owns(int(index_text)):
            shutil.rmtree(partial, ignore_errors=True)
