from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import read_jsonl
from unimo_pipe.pipeline.config import Source, option, resolve_options
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.runner import committed_shard_dirs, run_stage, shard_dir
from unimo_pipe.pipeline.stage import CommonOptions, Record, Stage


class SimulatedKill(BaseException):
    """Not an Exception: like SIGKILL/KeyboardInterrupt, nothing per-record catches it."""


@dataclass
class NumbersOptions(CommonOptions):
    count: int = option(20, help="records")
    bad: list[int] = option([], help="records that fail")
    unreadable: list[int] = option([], help="records the reader cannot make")
    shard_size: int = option(5, help="records per shard")


class NumbersStage(Stage):
    """Writes n*n for each record n; kills itself once at `kill_at` to test resume."""

    name = "numbers"
    summary = "test stage"
    options_class = NumbersOptions
    kill_at: int | None = None
    processed: list[int]

    def __init__(self):
        self.processed = []

    def iter_records(self, options):
        for n in range(options.count):
            if n in options.unreadable:
                yield Record(f"line:{n}", error="malformed_row", detail=f"row {n}")
            else:
                yield Record(str(n), n)

    def process_shard(self, records, ctx):
        with ctx.path("squares.jsonl").open("w") as out:
            for record in records:
                if record.value == self.kill_at:
                    self.kill_at = None
                    raise SimulatedKill()
                with ctx.record(record.key):
                    if record.value in ctx.options.bad:
                        raise RecordError("bad_number", f"{record.value} is bad")
                    out.write(json.dumps({"n": record.value, "square": record.value**2}) + "\n")
                    self.processed.append(record.value)


def make_options(tmp_path: Path, **values):
    values.setdefault("out", str(tmp_path / "out"))
    return resolve_options(NumbersOptions, [Source("test", values)])


def all_rows(out: Path) -> list[dict]:
    return [row for shard in committed_shard_dirs(out) for row in read_jsonl(shard / "squares.jsonl")]


def test_run_writes_shards_stats_and_summary(tmp_path):
    options = make_options(tmp_path, count=12, bad=[3], unreadable=[7])
    result = run_stage(NumbersStage(), options)
    assert result.complete and result.shards_total == 3 and result.shards_run == 3
    rows = all_rows(options.out)
    assert [r["n"] for r in rows] == [n for n in range(12) if n not in (3, 7)]
    stats = json.loads((shard_dir(options.out, 0) / "stats.json").read_text())
    assert stats["records"] == 5 and stats["ok"] == 4 and stats["failed"] == 1
    assert stats["failure_reasons"] == {"bad_number": 1}
    assert stats["failure_examples"][0] == {"record": "3", "reason": "bad_number", "detail": "3 is bad"}
    assert len(stats["config_hash"]) == 16 and "numpy" in stats["versions"]
    summary = json.loads((options.out / "summary.json").read_text())
    assert summary["records"] == 12 and summary["ok"] == 10 and summary["failed"] == 2
    assert summary["failure_reasons"] == {"bad_number": 1, "malformed_row": 1}
    assert (options.out / "config.yaml").read_text().startswith("stage: numbers")


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    options = make_options(tmp_path, count=23)
    stage = NumbersStage()
    stage.kill_at = 12  # in the middle of shard 2
    with pytest.raises(SimulatedKill):
        run_stage(stage, options)
    assert [d.name for d in committed_shard_dirs(options.out)] == ["00000", "00001"]
    assert (options.out / "shards" / "00002.partial").is_dir()
    assert not (options.out / "summary.json").exists()

    resumed = NumbersStage()
    result = run_stage(resumed, options)
    assert result.shards_skipped == 2 and result.shards_run == 3
    assert resumed.processed == list(range(10, 23))  # committed shards were not redone
    assert [r["n"] for r in all_rows(options.out)] == list(range(23))
    assert not list((options.out / "shards").glob("*.partial"))
    assert json.loads((options.out / "summary.json").read_text())["records"] == 23


def test_rerun_of_finished_output_does_nothing(tmp_path):
    options = make_options(tmp_path, count=10)
    run_stage(NumbersStage(), options)
    again = NumbersStage()
    result = run_stage(again, options)
    assert again.processed == [] and result.shards_skipped == 2 and result.complete


def test_config_change_is_refused_unless_overwrite(tmp_path):
    run_stage(NumbersStage(), make_options(tmp_path, count=10))
    changed = make_options(tmp_path, count=10, shard_size=4)
    with pytest.raises(UserError, match=r"different config \(changed: shard_size\).*--overwrite"):
        run_stage(NumbersStage(), changed)
    (tmp_path / "out" / "merged_index.json").write_text("{}")  # a merged output of the old config
    overwrite = make_options(tmp_path, count=10, shard_size=4, overwrite=True)
    result = run_stage(NumbersStage(), overwrite)
    assert not (tmp_path / "out" / "merged_index.json").exists()
    assert result.shards_total == 3 and result.shards_run == 3
    assert [r["n"] for r in all_rows(overwrite.out)] == list(range(10))


def test_non_output_options_do_not_count_as_a_change(tmp_path):
    run_stage(NumbersStage(), make_options(tmp_path, count=10))
    result = run_stage(NumbersStage(), make_options(tmp_path, count=10, strict=True))
    assert result.shards_skipped == 2


def test_another_stage_output_is_refused(tmp_path):
    run_stage(NumbersStage(), make_options(tmp_path))

    class Other(NumbersStage):
        name = "other"

    with pytest.raises(UserError, match="holds output of stage 'numbers'"):
        run_stage(Other(), make_options(tmp_path))


def test_strict_reraises_record_errors(tmp_path):
    with pytest.raises(RecordError):
        run_stage(NumbersStage(), make_options(tmp_path, bad=[2], strict=True))
    with pytest.raises(UserError, match="bad input record line:1"):
        run_stage(NumbersStage(), make_options(tmp_path / "b", unreadable=[1], strict=True))


def test_workers_split_shards_and_the_last_one_writes_the_summary(tmp_path):
    first = run_stage(NumbersStage(), make_options(tmp_path, count=23, shard="0/2"))
    assert first.shards_run == 3 and not first.complete
    assert not (tmp_path / "out" / "summary.json").exists()
    second = run_stage(NumbersStage(), make_options(tmp_path, count=23), env={"RANK": "1", "WORLD_SIZE": "2"})
    assert second.shards_run == 2 and second.complete
    assert [r["n"] for r in all_rows(tmp_path / "out")] == list(range(23))


def test_a_stage_that_loses_records_is_caught(tmp_path):
    class Lossy(NumbersStage):
        def process_shard(self, records, ctx):
            for record in records[1:]:
                with ctx.record(record.key):
                    pass

    with pytest.raises(RuntimeError, match="accounted 4 of 5 records"):
        run_stage(Lossy(), make_options(tmp_path))


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        run_stage(NumbersStage(), make_options(tmp_path, out=str(tmp_path / "file")))


class LifecycleStage(NumbersStage):
    """Records the order in which the runner calls the stage's lifecycle methods."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def open(self, options, run):
        self.calls.append("open")
        self.run = run

    def process_shard(self, records, ctx):
        assert ctx.run is self.run
        self.calls.append(f"shard {ctx.index}")
        super().process_shard(records, ctx)

    def finalize(self, options, shard_dirs):
        self.calls.append(f"finalize {len(shard_dirs)}")

    def close(self):
        self.calls.append("close")


def test_the_runner_opens_a_stage_once_before_its_first_shard_and_closes_it_always(tmp_path):
    options = make_options(tmp_path, count=10)
    stage = LifecycleStage()
    run_stage(stage, options)
    assert stage.calls == ["open", "shard 0", "shard 1", "close", "finalize 2"]
    assert stage.run.config_hash == json.loads((options.out / "stage.json").read_text())["config_hash"]
    assert not stage.run.will_run(0)  # committed by now
    again = LifecycleStage()
    run_stage(again, options)
    assert again.calls == ["close"]  # nothing to do: no models loaded, summary already written


def test_a_stage_that_dies_mid_run_is_still_closed(tmp_path):
    stage = LifecycleStage()
    stage.kill_at = 7
    with pytest.raises(SimulatedKill):
        run_stage(stage, make_options(tmp_path, count=10))
    assert stage.calls == ["open", "shard 0", "shard 1", "close"]


def test_bad_side_input_rows_found_at_open_are_kept_in_the_summary(tmp_path):
    class ProblemStage(NumbersStage):
        def open(self, options, run):
            run.input_problem("side.jsonl:4", "malformed_json")

    options = make_options(tmp_path, count=3)
    run_stage(ProblemStage(), options)
    summary = json.loads((options.out / "summary.json").read_text())
    assert summary["input_problems"] == {"count": 1, "reasons": {"malformed_json": 1},
                                         "examples": [{"where": "side.jsonl:4", "reason": "malformed_json",
                                                       "detail": ""}]}
    strict = make_options(tmp_path / "strict", count=3, strict=True)
    with pytest.raises(UserError, match="side.jsonl:4: malformed_json"):
        run_stage(ProblemStage(), strict)
