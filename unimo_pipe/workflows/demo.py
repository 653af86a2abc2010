"""The demo recipe: run the shipped demo workflow on the bundled sample data and explain the result."""

from __future__ import annotations

import time
from pathlib import Path

from unimo_pipe.pipeline.workflow import format_summary, load_config_file, run_steps
from unimo_pipe.workflows import demo_data_dir, shipped_config
from unimo_pipe.workflows.tiny_models import TINY_DETECTOR_FILE, make_tiny_models


def run_demo(out: Path) -> None:
    started = time.perf_counter()
    out = out.resolve()
    models = out / "models"
    if not (models / TINY_DETECTOR_FILE).is_file():
        make_tiny_models(models)
    variables = {"out": str(out), "data": str(demo_data_dir()), "models": str(models)}
    steps = load_config_file(shipped_config("demo"), variables=variables)
    results = run_steps(steps)
    print(format_summary(results))
    print()
    print("Models used by this demo:")
    notes = [note for step in steps for note in step.stage.models_used(step.options)]
    for note in notes or ["none: the stages in this demo so far only read and clean data"]:
        print(f"  - {note}")
    print()
    print(f"Outputs are under {out} (one folder per stage; see each folder's summary.json).")
    print(f"Training shards: unimo-pipe inspect {out / 'shards'}")
    print(f"Demo finished in {time.perf_counter() - started:.1f} s; rerun it and every finished shard is skipped.")
