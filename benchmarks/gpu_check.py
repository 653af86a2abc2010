"""`make gpu-check`: the GPU tests and every benchmark at GPU size in one run, with one JSON report.

For a session that gets a CUDA machine: `pytest -m gpu`, then each script in benchmarks/ with the
arguments in BENCHMARKS (each script picks its GPU sizes itself on CUDA; the arguments here keep the
whole run under about 8 minutes on one H100, and TOTAL_BUDGET_S stops it starting checks past that).
Writes the report (default gpu-check.json: per check its command, exit status and seconds; a benchmark's
JSON line; pytest's pass/fail counts), prints a table, and exits 1 when any check failed or was cut.

Without a CUDA device it prints one line, writes no report and exits 0, so that `make gpu-check` on a
CPU machine is a no-op rather than a failure. `--dry-run` prints the commands without running them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA_MESSAGE = "no CUDA device: gpu-check needs one; nothing was run"
TOTAL_BUDGET_S = 480
PYTEST_TIMEOUT_S = 150
_COMMON_FIELDS = ("benchmark", "cpu_cores", "python")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script, the arguments it runs with here, and the most seconds it may take."""

    script: str
    args: tuple[str, ...] = ()
    timeout_s: int = 120


# GPU-heavy ones first. Scripts without arguments run at their own defaults, which on CUDA are the GPU
# sizes (pretrain: base size, batch 64, compiled; backtranslate: full-size Marian; retrieve: adds the
# torch GPU index). The CPU-only ones run at their default sizes, but for scene_graph, halved: it is the
# slowest of them and its claims are ratios, which do not need 2,000 captions.
BENCHMARKS = (
    Benchmark("pretrain.py", ("--steps", "5", "--warmup", "3"), timeout_s=240),  # compiles one graph per shape
    Benchmark("quality.py", ("--train-images", "400", "--test-images", "100", "--seeds", "0", "--configs",
                             "in_batch_hard", "broken_pairing"), timeout_s=240),  # the known-truth world, small
    Benchmark("extract_regions.py", ("--images", "48", "--workers", "4"), timeout_s=90),
    Benchmark("backtranslate.py", ("--captions", "600"), timeout_s=120),
    Benchmark("retrieve.py", (), timeout_s=120),
    Benchmark("data_loader.py", ("--workers", "0", "2", "4", "8"), timeout_s=60),
    Benchmark("scene_graph.py", ("--captions", "1000", "--repeats", "2"), timeout_s=120),
    Benchmark("import_pairs.py", (), timeout_s=60),
    Benchmark("stores.py", (), timeout_s=60),
    Benchmark("executors.py", ("--captions", "4000"), timeout_s=90),
    Benchmark("generate.py", ("--images", "64"), timeout_s=120),
    Benchmark("report.py", (), timeout_s=90),
)


@dataclass
class CheckResult:
    """What one command did. `rc` is None when it was not started (the budget was spent); `summary` is
    pytest's counts or a benchmark's JSON line."""

    name: str
    command: list[str]
    rc: int | None
    seconds: float
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    summary: dict | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def benchmark_command(benchmark: Benchmark, python: str = sys.executable) -> list[str]:
    """The command line that runs one benchmark script from the repository root."""
    return [python, f"benchmarks/{benchmark.script}", *benchmark.args]


def pytest_command(junit_xml: Path, python: str = sys.executable) -> list[str]:
    """`pytest -m gpu`, writing its counts to `junit_xml`."""
    return [python, "-m", "pytest", "-q", "-m", "gpu", f"--junitxml={junit_xml}"]


def cuda_device_name() -> str | None:
    """The first CUDA device's name, or None without torch or without a device."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_command(name: str, command: list[str], timeout_s: float) -> CheckResult:
    """Run one command from the repository root, killing its whole process group past `timeout_s`.

    The group, not just the child: DataLoader workers and compile workers would otherwise keep the
    output pipes open and the wait would never end.
    """
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=ROOT, env=_this_checkout_first(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            timed_out = True
    return CheckResult(name, command, process.returncode, round(time.perf_counter() - start, 1), timed_out,
                       stdout, stderr)


def _this_checkout_first() -> dict[str, str]:
    """The environment with this repository first on PYTHONPATH, so its code is measured whatever is installed."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def not_started(name: str, command: list[str]) -> CheckResult:
    return CheckResult(name, command, None, 0.0, stderr=f"not started: the {TOTAL_BUDGET_S} s budget was spent")


def last_json_line(stdout: str) -> dict | None:
    """A benchmark's report: the last stdout line that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def junit_counts(junit_xml: Path) -> dict[str, int] | None:
    """passed / failed / errors / skipped from pytest's JUnit XML; None when pytest wrote none."""
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors",
                                                                             "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run_all(deadline: float) -> tuple[CheckResult, list[CheckResult]]:
    """pytest -m gpu, then every benchmark, each within its own timeout and the shared deadline."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "pytest.xml"
        pytest_result = _run_within("pytest -m gpu", pytest_command(junit), PYTEST_TIMEOUT_S, deadline)
        pytest_result.summary = junit_counts(junit)
    results = []
    for benchmark in BENCHMARKS:
        result = _run_within(benchmark.script, benchmark_command(benchmark), benchmark.timeout_s, deadline)
        result.summary = last_json_line(result.stdout)
        results.append(result)
    return pytest_result, results


def _run_within(name: str, command: list[str], timeout_s: float, deadline: float) -> CheckResult:
    left = deadline - time.monotonic()
    if left <= 0:
        return not_started(name, command)
    print(f"gpu-check: running {name}", file=sys.stderr, flush=True)
    return run_command(name, command, min(timeout_s, left))


def build_report(device: str, pytest_result: CheckResult, benchmarks: list[CheckResult]) -> dict:
    """The JSON report: everything the table shows, plus commands and the tail of a failure's stderr."""
    return {
        "device": device,
        "ok": pytest_result.ok and all(result.ok for result in benchmarks),
        "total_s": round(pytest_result.seconds + sum(result.seconds for result in benchmarks), 1),
        "pytest": {**_entry(pytest_result), "counts": pytest_result.summary},
        "benchmarks": [{**_entry(result), "line": result.summary} for result in benchmarks],
    }


def _entry(result: CheckResult) -> dict:
    entry = {"name": result.name, "command": result.command, "rc": result.rc, "seconds": result.seconds,
             "timed_out": result.timed_out}
    if not result.ok:
        entry["stderr_tail"] = result.stderr[-2000:]
    return entry


def format_table(report: dict, width: int = 100) -> str:
    """One row per check: name, status, seconds, and the counts or the benchmark's own fields."""
    rows = [("check", "status", "seconds", "result")]
    rows.append(_row(report["pytest"], _counts_text(report["pytest"]["counts"])))
    rows += [_row(entry, _line_text(entry["line"])) for entry in report["benchmarks"]]
    name_width = max(len(row[0]) for row in rows)
    status_width = max(len(row[1]) for row in rows)
    lines = [f"{name:<{name_width}}  {status:<{status_width}}  {seconds:>7}  {result}"[:width].rstrip()
             for name, status, seconds, result in rows]
    verdict = "all checks passed" if report["ok"] else "some checks failed: see the report's stderr_tail"
    return "\n".join([*lines, f"{report['device']}: {verdict} in {report['total_s']} s"])


def _row(entry: dict, result_text: str) -> tuple[str, str, str, str]:
    return entry["name"], _status(entry), f"{entry['seconds']:.1f}", result_text


def _status(entry: dict) -> str:
    if entry["timed_out"]:
        return "timed out"
    if entry["rc"] is None:
        return "not started"
    return "ok" if entry["rc"] == 0 else f"rc {entry['rc']}"


def _counts_text(counts: dict | None) -> str:
    if counts is None:
        return "no counts (pytest wrote no report)"
    return ", ".join(f"{value} {key}" for key, value in counts.items())


def _line_text(line: dict | None) -> str:
    if line is None:
        return "no JSON line"
    return json.dumps({key: value for key, value in line.items() if key not in _COMMON_FIELDS})


def dry_run_commands() -> list[str]:
    """The commands a real run would start, one shell line each."""
    commands = [pytest_command(Path("TMPDIR/pytest.xml"))]
    commands += [benchmark_command(benchmark) for benchmark in BENCHMARKS]
    return [" ".join(command) for command in commands]


def main(argv: list[str] | None = None) -> int:
    """Run the GPU checks; 0 when all passed or when there is no CUDA device (nothing run), else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-check.json", help="JSON report to write")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)
    if args.dry_run:
        print("\n".join(dry_run_commands()))
        return 0
    device = cuda_device_name()
    if device is None:
        print(NO_CUDA_MESSAGE)
        return 0
    pytest_result, benchmarks = run_all(deadline=time.monotonic() + TOTAL_BUDGET_S)
    report = build_report(device, pytest_result, benchmarks)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"report: {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
