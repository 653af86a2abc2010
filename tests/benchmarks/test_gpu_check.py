from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(report)], capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0
    assert result.stdout == "no CUDA device: gpu-check needs one; nothing was run\n"
    assert not report.exists()


def test_every_benchmark_script_is_checked(gpu_check):
    scripts = {path.name for path in SCRIPT.parent.glob("*.py")} - {"_common.py", "gpu_check.py"}
    assert {benchmark.script for benchmark in gpu_check.BENCHMARKS} == scripts


def test_dry_run_prints_pytest_then_each_benchmark(gpu_check, capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(gpu_check.BENCHMARKS)
    assert " -m pytest -q -m gpu " in lines[0]
    assert lines[1].endswith("benchmarks/pretrain.py --steps 5 --warmup 3")


def test_a_command_is_timed_and_its_json_line_kept(gpu_check):
    code = "import json; print('warming up'); print(json.dumps({'benchmark': 'x', 'speedup': 2.5}))"
    result = gpu_check.run_command("x", [sys.executable, "-c", code], timeout_s=60)
    assert result.ok and result.seconds >= 0
    assert gpu_check.last_json_line(result.stdout) == {"benchmark": "x", "speedup": 2.5}


def test_a_command_past_its_timeout_is_killed(gpu_check):
    result = gpu_check.run_command("slow", [sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    assert result.timed_out and not result.ok and result.seconds < 10


def test_junit_counts(gpu_check, tmp_path):
    junit = tmp_path / "pytest.xml"
    junit.write_text('<testsuites><testsuite tests="6" failures="1" errors="1" skipped="2"/></testsuites>')
    assert gpu_check.junit_counts(junit) == {"passed": 2, "failed": 1, "errors": 1, "skipped": 2}
    assert gpu_check.junit_counts(tmp_path / "missing.xml") is None


def fake_results(gpu_check):
    pytest_result = gpu_check.CheckResult("pytest -m gpu", ["pytest"], 0, 40.0,
                                          summary={"passed": 4, "failed": 0, "errors": 0, "skipped": 0})
    line = {"benchmark": "pretrain", "cpu_cores": 16, "python": "3.11", "samples_per_s": 900.5, "ratio": 3.1}
    benchmarks = [
        gpu_check.CheckResult("pretrain.py", ["python", "benchmarks/pretrain.py"], 0, 100.0, summary=line),
        gpu_check.CheckResult("retrieve.py", ["python", "benchmarks/retrieve.py"], -9, 120.0, timed_out=True,
                              stderr="killed"),
        gpu_check.not_started("stores.py", ["python", "benchmarks/stores.py"]),
    ]
    return pytest_result, benchmarks


def test_report_holds_each_check(gpu_check):
    report = gpu_check.build_report("NVIDIA H100", *fake_results(gpu_check))
    assert json.loads(json.dumps(report)) == report
    assert report["ok"] is False and report["total_s"] == 260.0
    assert report["pytest"]["counts"]["passed"] == 4 and report["pytest"]["rc"] == 0
    pretrain, retrieve, stores = report["benchmarks"]
    assert pretrain["line"]["ratio"] == 3.1 and pretrain["seconds"] == 100.0 and "stderr_tail" not in pretrain
    assert retrieve["timed_out"] and retrieve["stderr_tail"] == "killed"
    assert stores["rc"] is None and "budget" in stores["stderr_tail"]


def test_table_has_one_row_per_check_and_a_verdict(gpu_check):
    table = gpu_check.format_table(gpu_check.build_report("NVIDIA H100", *fake_results(gpu_check))).splitlines()
    assert table[0].split() == ["check", "status", "seconds", "result"]
    assert table[1].split()[:4] == ["pytest", "-m", "gpu", "ok"] and "4 passed, 0 failed" in table[1]
    assert table[2].split()[:3] == ["pretrain.py", "ok", "100.0"] and '"ratio": 3.1' in table[2]
    assert "cpu_cores" not in table[2]
    assert "timed out" in table[3] and "not started" in table[4]
    assert table[5] == "NVIDIA H100: some checks failed: see the report's stderr_tail in 260.0 s"
