"""Workflows: YAML lists of stage steps, validated together and run in order.

    vars:                       # ${name} anywhere in a step is replaced; override with vars.name=...
      out: runs/coco
    steps:
      - stage: import-pairs     # step name defaults to the stage name; set `name:` to repeat a stage
        captions: [captions.jsonl]
        out: ${out}/pairs

Top-level `executor:` (and `ray_address`, `ray_workers`, `cpus_per_worker`, `gpus_per_worker`) set where
every step runs; a step may set its own, and `unimo-pipe run --executor ...` overrides both.

Relative paths are relative to the YAML file. A step's inputs may be outputs of earlier steps,
which need not exist yet when the workflow is validated. A single-stage config (`stage: NAME` and its
options at top level) is a one-step workflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.config import Source, load_yaml, parse_overrides
from unimo_pipe.pipeline.errors import ConfigError, UserError, naming_folder
from unimo_pipe.pipeline.runner import RunResult, run_stage
from unimo_pipe.pipeline.stage import EXECUTOR_OPTIONS, STAGES, Stage, resolve_stage_options

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORKFLOW_KEYS = {"name", "description", "vars", "steps", *EXECUTOR_OPTIONS}


@dataclass
class Step:
    name: str
    stage: Stage
    options: Any


def load_config_file(path: Path, overrides: list[str] = (), variables: dict[str, str] | None = None,
                     executor: dict[str, Any] | None = None) -> list[Step]:
    """Steps of a workflow or single-stage YAML, with every problem in any step reported at once.
    `executor`: executor options (e.g. from `run --executor ray`) that override every step's."""
    data = load_yaml(path)
    if "steps" not in data:
        if "stage" not in data:
            raise UserError(f"{path} names no stage: add 'stage: NAME' (one stage) or a 'steps:' list (workflow)")
        data = {"steps": [data]}
    executor_layers = ({k: data[k] for k in EXECUTOR_OPTIONS if k in data}, executor or {})
    errors = [f"unknown top-level key {k!r} in {path.name} (known: {', '.join(sorted(_WORKFLOW_KEYS))})"
              for k in data if k not in _WORKFLOW_KEYS]
    var_values = _variables(path, data.get("vars") or {}, variables or {}, overrides)
    step_overrides = [o for o in overrides if not o.startswith("vars.")]
    steps, step_errors = _build_steps(path, data["steps"], var_values, step_overrides, executor_layers)
    errors.extend(step_errors)
    if errors:
        raise ConfigError(errors)
    return steps


def _variables(path: Path, declared: dict, given: dict[str, str], overrides: list[str]) -> dict[str, str]:
    values = {"workflow_dir": str(path.resolve().parent)}
    values.update({str(k): str(v) for k, v in declared.items()})
    values.update(given)
    for item in overrides:
        if item.startswith("vars."):
            key, _, value = item.removeprefix("vars.").partition("=")
            values[key] = value
    return values


def _build_steps(path: Path, raw_steps: Any, variables: dict[str, str], overrides: list[str],
                 executor_layers: tuple[dict[str, Any], dict[str, Any]] = ({}, {})):
    if not isinstance(raw_steps, list) or not raw_steps:
        return [], [f"{path.name}: 'steps' must be a non-empty list of stage steps"]
    override_sources = _split_step_overrides(overrides)
    steps, errors, produced, names = [], [], [], []
    for position, raw in enumerate(raw_steps):
        if not isinstance(raw, dict) or "stage" not in raw:
            errors.append(f"step {position + 1}: needs 'stage: NAME'")
            continue
        raw = _substitute(dict(raw), variables, errors, f"step {position + 1}")
        stage_name = raw.pop("stage")
        name = str(raw.pop("name", stage_name))
        names.append(name)
        try:
            stage = STAGES.get(stage_name)()
        except UserError as exc:
            errors.append(f"step {name}: {exc}")
            continue
        workflow_executor, command_executor = executor_layers
        sources = [Source(f"{path.name}, top level", workflow_executor),
                   Source(f"{path.name}, step {name}", raw, base_dir=path.resolve().parent),
                   parse_overrides(override_sources.get(name, []), origin=f"override {name}.*"),
                   Source("command line", command_executor)]
        try:
            steps.append(Step(name, stage, resolve_stage_options(stage, sources, produced=tuple(produced))))
        except ConfigError as exc:
            errors.extend(f"step {name}: {message}" for message in exc.errors)
        if "out" in raw:
            produced.append(path.resolve().parent / str(raw["out"]))
    errors += [f"override for unknown step {n!r} (steps: {', '.join(names)})" for n in override_sources
               if n not in names]
    return steps, errors


def _split_step_overrides(overrides: list[str]) -> dict[str, list[str]]:
    by_step: dict[str, list[str]] = {}
    for item in overrides:
        step, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise UserError(f"workflow override {item!r} must be STEP.option=value or vars.NAME=value")
        by_step.setdefault(step, []).append(rest)
    return by_step


def _substitute(value: Any, variables: dict[str, str], errors: list[str], where: str) -> Any:
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            if match.group(1) not in variables:
                errors.append(f"{where}: unknown variable ${{{match.group(1)}}} (define it under vars:)")
                return match.group(0)
            return variables[match.group(1)]
        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, variables, errors, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, errors, where) for k, v in value.items()}
    return value


def run_steps(steps: list[Step]) -> list[RunResult]:
    """Run each step in order; each skips the shards it has already committed."""
    results = []
    for step in steps:
        with naming_folder(step.options.out):
            results.append(run_stage(step.stage, step.options))
    return results


def format_summary(results: list[RunResult]) -> str:
    """A plain table: stage, shards, records, failures, time, throughput."""
    header = ("stage", "shards run/done/total", "records", "ok", "failed", "skipped", "time s", "records/s")
    rows = [header]
    for r in results:
        t = r.totals
        done = f"{r.shards_run}/{r.shards_run + r.shards_skipped}/{r.shards_total}"
        rows.append((r.stage, done, f"{t['records']:,}", f"{t['ok']:,}", f"{t['failed']:,}", f"{t['skipped']:,}",
                     f"{r.elapsed_s:.1f}", f"{r.records_per_s:,.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.totals.get("counters"):
            counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(r.totals["counters"].items()))
            lines.append(f"{r.stage} counts: {counts}")
        if r.totals.get("failure_reasons"):
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.totals["failure_reasons"].items()))
            lines.append(f"{r.stage} failures by reason: {reasons} (examples in {r.out_dir}/shards/*/stats.json)")
        if not r.complete:
            lines.append(f"{r.stage}: not every shard is committed yet (other workers, or rerun to finish)")
    return "\n".join(lines)
