"""pretrain / finetune / finetune-classifier outputs: loss curves per objective, learning rate, samples/s and
R@K or accuracy over steps (from metrics.jsonl), and the final scores."""

from __future__ import annotations

import json
from typing import Any

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import iter_jsonl, read_json
from unimo_pipe.workflows.report.discover import METRICS_FILE, Found
from unimo_pipe.workflows.report.page import Section, escape, table
from unimo_pipe.workflows.report.plots import figure_html, lines
from unimo_pipe.workflows.training_loop import RUN_RECORD

SCORE_MARKERS = ("_r1", "_r5", "_r10", "accuracy")  # R@K and accuracy columns of a metrics row


def training_section(found: Found) -> Section:
    run = _run_record(found)
    command = run.get("command", "training")
    section = Section(kind="training", title=f"{command}: {found.path.name}", source=found.path)
    rows = _metric_rows(found, section)
    plots = []
    if rows:
        def series(names: list[str]) -> dict[str, tuple[list[float], list[float]]]:
            return {name: ([r["step"] for r in rows if _number(r.get(name))],
                           [r[name] for r in rows if _number(r.get(name))]) for name in names}

        columns = sorted({k for r in rows for k, v in r.items() if k != "step" and _number(v)})
        losses = [c for c in columns if c.startswith("loss") and c != "loss"]
        scores = [c for c in columns if any(m in c for m in SCORE_MARKERS) and "chance" not in c]
        for title, names, ylabel in (("total loss", ["loss"] if "loss" in columns else [], "loss"),
                                     ("loss per objective", losses, "loss"), ("learning rate", ["lr"], "lr"),
                                     ("throughput", ["samples_per_s"], "samples/s"),
                                     ("R@K / accuracy", scores, "score")):
            present = [n for n in names if n in columns]
            if present:
                plots.append(figure_html(lines(series(present), title=title, ylabel=ylabel)))
    else:
        section.notes.append(f"no readable {METRICS_FILE} rows: no curves")
    summary = [("steps logged", f"{len(rows):,}"), ("last step", rows[-1]["step"] if rows else "")]
    summary += [(k, run[k]) for k in ("steps", "batch_size", "lr", "precision") if k in run]
    section.body = (table(("run", ""), summary) + f'<div class="plots">{"".join(plots)}</div>'
                    + _final_scores(found, section))
    return section


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_record(found: Found) -> dict[str, Any]:
    try:
        record = read_json(found.path / RUN_RECORD) if (found.path / RUN_RECORD).is_file() else {}
    except UserError:
        return {}
    return record if isinstance(record, dict) else {}


def _metric_rows(found: Found, section: Section) -> list[dict[str, Any]]:
    path = found.path / METRICS_FILE
    if not path.is_file():
        return []
    rows, bad = [], []
    for line, row, problem in iter_jsonl(path):
        if problem or not isinstance(row, dict) or not _number(row.get("step")):
            bad.append(line)
        else:
            rows.append(row)
    if bad:
        torn = bad == [line for line, _, _ in iter_jsonl(path)][-1:]
        section.notes.append(f"{path}: line(s) {', '.join(map(str, bad[:10]))} unreadable, left out"
                             + (" (a torn last line: the run was killed while writing it, or is still going)"
                                if torn else ""))
    return sorted(rows, key=lambda r: r["step"])


def _final_scores(found: Found, section: Section) -> str:
    """The flat numeric JSON files the recipe wrote next to its metrics (zero_shot.json, classification.json)."""
    out = []
    for path in sorted(found.path.glob("*.json")):
        if path.name == RUN_RECORD:
            continue
        try:
            scores = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            section.notes.append(f"{path} is unreadable: its scores are not shown")
            continue
        if is_scores(scores):
            out.append(f"<h3>{escape(path.name)}</h3>" + _scores_table(scores))
    return "".join(out)


def is_scores(value: Any) -> bool:
    """A scores file's content: a non-empty mapping of names to numbers (what `evaluate --out` writes)."""
    return isinstance(value, dict) and bool(value) and all(_number(v) for v in value.values())


def _scores_table(scores: dict[str, float]) -> str:
    return table(("score", "value"), [(k, f"{v:.4g}") for k, v in scores.items()])


def scores_section(found: Found) -> Section:
    """`evaluate --out FILE` / `evaluate-classifier --out FILE`: the scores it wrote."""
    section = Section(kind="scores", title=f"evaluation: {found.path.name}", source=found.path)
    section.body = _scores_table(read_json(found.path))
    return section
