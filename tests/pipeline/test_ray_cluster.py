"""A real two-node Ray cluster on this machine (`ray start --head` and a second `ray start --address` node, one
CPU each): a stage run through `--ray-address` survives a killed worker process with output equal to the
local run's. The test starts and stops both nodes itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_ray_executor import data_files
from unimo_pipe.pipeline.cli import main

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
# Loopback only, one user: the nodes and the driver skip Ray's token authentication.
LOOPBACK_ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str) -> None:
    subprocess.run([str(RAY), *args], check=True, capture_output=True, timeout=120, env=LOOPBACK_ENV)


@pytest.fixture
def two_node_cluster():
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        ray_cli("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                "--include-dashboard=false", "--disable-usage-stats")
        ray_cli("start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                "--disable-usage-stats")
        yield address
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120, env=LOOPBACK_ENV)


def shard_workers() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::_ShardWorker"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def import_pairs_run_locally(tmp_path: Path) -> tuple[list[str], Path]:
    """600 tiny shards of import-pairs, run by the local executor into tmp_path/local (to compare with); the
    command's arguments and the folder a rerun writes."""
    captions = tmp_path / "caps.jsonl"
    captions.write_text("".join(json.dumps({"id": str(i), "image": f"{i}.jpg", "caption": f"a dog number {i}"}) + "\n"
                                for i in range(3000)))
    out = tmp_path / "pairs"
    args = ["import-pairs", "--captions", str(captions), "--out", str(out), "shard_size=5"]
    assert main(args) == 0
    out.rename(tmp_path / "local")
    return args, out


def test_a_killed_worker_costs_only_its_shards_on_a_two_node_cluster(two_node_cluster, tmp_path):
    args, out = import_pairs_run_locally(tmp_path)
    command = [sys.executable, "-m", "unimo_pipe", *args, "--executor", "ray", "--ray-address", two_node_cluster]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=LOOPBACK_ENV)
    killed = None
    deadline = time.monotonic() + 90
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        workers = shard_workers()
        if len(workers) == 2 and (out / "shards" / "00000" / "stats.json").is_file():
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = run.communicate(timeout=120)
    assert killed is not None, "the run ended before a worker could be killed"
    assert run.returncode == 0, stderr
    assert "sending it to another worker" in stderr
    assert data_files(tmp_path / "local") == data_files(out)
    assert json.loads((out / "summary.json").read_text())["ok"] == 3000
    shutil.rmtree(tmp_path / "local")


def test_ctrl_c_stops_the_ray_run_cleanly_and_a_rerun_loses_and_doubles_nothing(tmp_path):
    args, out = import_pairs_run_locally(tmp_path)
    command = [sys.executable, "-m", "unimo_pipe", *args, "--executor", "ray", "--ray-workers", "2"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LOOPBACK_ENV)
    deadline = time.monotonic() + 90
    while not (out / "shards" / "00002" / "stats.json").is_file() and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "interrupted; rerun the same command to resume" in stderr
    assert not (out / "summary.json").exists()
    assert shard_workers() == []  # no actor outlives the run
    assert main([*args, "--executor", "ray", "--ray-workers", "2"]) == 0
    assert data_files(tmp_path / "local") == data_files(out)

