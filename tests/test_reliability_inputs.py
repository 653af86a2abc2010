"""Reproductions of issue #16's input and concurrency faults: each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.text import normalize_text

REPO = Path(__file__).resolve().parents[1]


def caption_lines(n: int) -> bytes:
    return "".join(json.dumps({"id": str(i), "image": f"{i}.jpg", "caption": f"caption {i}"}) + "\n"
                   for i in range(n)).encode()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "unimo_pipe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_zero_width_joiners_are_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalize_text(f"a {family} picnic") == f"a {family} picnic"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want": ZWNJ inside the word
    assert normalize_text(persian) == persian
    assert normalize_text("a\u200bb\u200e") == "a b"  # other zero-width characters still go


def test_an_input_given_as_a_pipe_is_refused_in_one_line_not_read_empty(tmp_path, capsys):
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, caption_lines(300)), os.close(write_end)))
    writer.start()
    try:
        code = main(["import-pairs", "--captions", f"/dev/fd/{read_end}", "--format", "jsonl",
                     "--out", str(tmp_path / "pairs")])
    finally:
        writer.join()
        os.close(read_end)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"/dev/fd/{read_end} is a pipe" in err and "write the data to a file first" in err
    assert not (tmp_path / "pairs" / "summary.json").exists()


def test_a_named_pipe_without_a_writer_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "caps.jsonl"
    os.mkfifo(fifo)
    result = run_cli("import-pairs", "--captions", str(fifo), "--out", str(tmp_path / "pairs"), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{fifo} is a pipe" in result.stderr and "write the data to a file first" in result.stderr
