"""Every stage's accounting: records ok / failed / skipped with reasons and examples, throughput, config hash."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import INPUT_PROBLEMS_FILE, STAGE_RECORD, STATS_FILE, SUMMARY_FILE
from unimo_pipe.pipeline.jsonl import read_json
from unimo_pipe.workflows.report.discover import Found
from unimo_pipe.workflows.report.page import Section, counts_table, escape, table

SHOWN_FAILURES = 10


def stage_section(found: Found) -> Section:
    name = found.stage or "unknown stage"
    title = f"{name}: {found.path.name}" if found.kind == "shard" else name
    section = Section(kind="stage", title=title, source=found.path)
    stats, examples = _shard_stats(found, section)
    totals = _totals(found, stats, section)
    config_hash = _config_hash(found)
    partial = found.partial_shards()
    if found.kind == "stage" and not found.complete:
        section.notes.append(f"half-written: {len(found.shards)} shard(s) committed, {len(partial)} partial "
                             f"({', '.join(p.name for p in partial) or 'none'}) and no {SUMMARY_FILE}: the run was "
                             "stopped or is still going; rerun the stage to finish it. Counts below cover the "
                             "committed shards only.")
    elif partial:
        section.notes.append(f"partial shard(s) not shown: {', '.join(p.name for p in partial)}")
    rate = totals.get("records_per_s")
    section.body = table(
        ("records", "ok", "failed", "skipped", "shards", "time s", "records/s", "config hash"),
        [(f"{totals.get('records', 0):,}", f"{totals.get('ok', 0):,}", f"{totals.get('failed', 0):,}",
          f"{totals.get('skipped', 0):,}", len(found.shards), f"{totals.get('elapsed_s', 0):.1f}",
          f"{rate:,.1f}" if rate is not None else "", config_hash)])
    for label, key in (("Failure reasons", "failure_reasons"), ("Skip reasons", "skip_reasons"),
                       ("Counts", "counters")):
        if totals.get(key):
            section.body += f"<h3>{label}</h3>" + counts_table(totals[key], ("name" if key == "counters" else
                                                                              "reason", "count"))
    if examples:
        section.body += f"<h3>Failed records (first {min(len(examples), SHOWN_FAILURES)})</h3>" + table(
            ("record", "reason", "detail"), [(e.get("record"), e.get("reason"), e.get("detail")) for e in
                                             examples[:SHOWN_FAILURES]])
    section.body += _input_problems(found, section)
    return section


def _shard_stats(found: Found, section: Section) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    stats, examples = [], []
    for shard in found.shards:
        try:
            row = read_json(shard / STATS_FILE)
        except UserError as exc:
            section.notes.append(str(exc))
            continue
        stats.append(row)
        examples.extend(row.get("failure_examples", []))
    return stats, examples


def _totals(found: Found, stats: list[dict[str, Any]], section: Section) -> dict[str, Any]:
    """summary.json for a finished stage output, else the sum of the committed shards' stats.json."""
    if found.complete:
        try:
            return read_json(found.root / SUMMARY_FILE)
        except UserError as exc:
            section.notes.append(str(exc))
    totals: dict[str, Any] = {key: sum(s.get(key, 0) for s in stats) for key in
                              ("records", "ok", "failed", "skipped", "elapsed_s")}
    for key in ("failure_reasons", "skip_reasons", "counters"):
        totals[key] = dict(sum((Counter(s.get(key, {})) for s in stats), Counter()))
    if totals["elapsed_s"]:
        totals["records_per_s"] = totals["records"] / totals["elapsed_s"]
    return totals


def _config_hash(found: Found) -> str:
    try:
        return str(read_json(found.root / STAGE_RECORD).get("config_hash", ""))
    except (UserError, OSError, AttributeError):
        return ""


def _input_problems(found: Found, section: Section) -> str:
    path = found.root / INPUT_PROBLEMS_FILE
    if not path.is_file():
        return ""
    try:
        problems = read_json(path)
    except UserError as exc:
        section.notes.append(str(exc))
        return ""
    return f"<h3>Problems in side inputs</h3><pre>{escape(json.dumps(problems, indent=1, ensure_ascii=False))}</pre>"


def read_counters(found: Found) -> dict[str, int]:
    """The stage's counters: from summary.json when finished, else summed over the committed shards."""
    section = Section(kind="stage", title="", source=found.path)
    return _totals(found, _shard_stats(found, section)[0], section).get("counters", {})
