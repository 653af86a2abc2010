"""Reproductions of issue #16's input and concurrency faults: each test failed before its fix."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.pipeline.test_runner import NumbersStage, make_options
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.config import Source
from unimo_pipe.pipeline.readers import iter_captions
from unimo_pipe.pipeline.runner import run_stage
from unimo_pipe.pipeline.stage import get_stage, resolve_stage_options
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


def hold_lock(path: Path, pid: int, host: str):
    """Take the lock file as a running worker would, from this (live) test process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(json.dumps({"pid": pid, "host": host}))
    f.flush()
    return f


def import_pairs_args(tmp_path: Path, *extra: str) -> list[str]:
    captions = tmp_path / "caps.jsonl"
    captions.write_bytes(caption_lines(300))
    return ["import-pairs", "--captions", str(captions), "--out", str(tmp_path / "pairs"), "--shard-size", "50",
            *extra]


def test_a_second_launch_on_the_same_out_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "pairs"
    holder = hold_lock(out / ".lock-0-of-1", os.getpid(), socket.gethostname())
    (out / "shards" / "00000.partial").mkdir(parents=True)  # the holder's shard in progress
    try:
        result = run_cli(*import_pairs_args(tmp_path))
    finally:
        holder.close()
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"pid {os.getpid()} on {socket.gethostname()}" in result.stderr
    assert (out / "shards" / "00000.partial").is_dir() and not (out / "summary.json").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "pairs"
    out.mkdir()
    (out / ".lock-0-of-1").write_text(json.dumps({"pid": 999999, "host": socket.gethostname()}))
    result = run_cli(*import_pairs_args(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["ok"] == 300


def test_workers_of_one_run_still_work_side_by_side(tmp_path):
    out = tmp_path / "pairs"
    holder = hold_lock(out / ".lock-0-of-2", os.getpid(), socket.gethostname())
    try:
        assert main(import_pairs_args(tmp_path, "--shard", "1/2")) == 0
        assert main(import_pairs_args(tmp_path, "--shard", "1/2")) == 0  # the lock is given back at the end
    finally:
        holder.close()
    assert len(list((out / "shards").iterdir())) == 3


class FinalizeCounter(NumbersStage):
    finalized: list[str] = []

    def finalize(self, options, shard_dirs):
        self.finalized.append(options.shard)


class WorkerFinishingMeanwhile(FinalizeCounter):
    """Worker 1/2; just as it finishes its shards, worker 0/2 finishes the rest and finalizes the run."""

    def close(self):
        run_stage(FinalizeCounter(), make_options(self.tmp_path, count=20, shard="0/2"))


def test_two_workers_finishing_together_finalize_once(tmp_path):
    FinalizeCounter.finalized = []
    worker = WorkerFinishingMeanwhile()
    worker.tmp_path = tmp_path
    result = run_stage(worker, make_options(tmp_path, count=20, shard="1/2"))
    assert result.complete and FinalizeCounter.finalized == ["0/2"]


def shard_output(tmp_path: Path) -> Path:
    """A `shard` output whose first shard holds only pairs and whose last holds only texts."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(caption_lines(4))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"text sentence {i}\n" for i in range(5)))
    out = tmp_path / "shards"
    assert main(["shard", "--pairs", str(pairs), "--text-corpus", str(corpus), "--out", str(out),
                 "--shard-size", "3"]) == 0
    return out


def test_merge_of_shards_holding_different_files_merges_every_kind(tmp_path):
    out = shard_output(tmp_path)
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert [json.loads(line)["id"] for line in (merged / "pairs.jsonl").read_text().splitlines()] == list("0123")
    assert len((merged / "texts.jsonl").read_text().splitlines()) == 5


def test_merge_refuses_what_it_cannot_merge_and_writes_nothing(tmp_path, capsys):
    out = shard_output(tmp_path)
    (out / "shards" / "00001" / "retrieval.npz").write_bytes(b"not mergeable")
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 2
    assert "retrieval.npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "pairs.jsonl", "shards"]


def test_a_merge_that_fails_midway_leaves_no_half_written_destination(tmp_path):
    out = shard_output(tmp_path)
    broken = out / "shards" / "00002" / "z_store"  # merged last, after both JSONL files
    broken.mkdir()
    (broken / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 2  # the damaged store is named in one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "pairs.jsonl", "shards"]


BOM = b"\xef\xbb\xbf"


def test_a_byte_order_mark_does_not_spoil_the_first_record(tmp_path):
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_bytes(BOM + caption_lines(2))
    tsv = tmp_path / "caps.tsv"
    tsv.write_bytes(BOM + b"caption\turl\na dog\td.jpg\n")
    coco = tmp_path / "caps.json"
    coco.write_bytes(BOM + json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                       "annotations": [{"id": 7, "image_id": 1, "caption": "a cat"}]}).encode())
    lines = tmp_path / "caps.txt"
    lines.write_bytes(BOM + b"a bird\n")
    for path in (jsonl, tsv, coco, lines):
        records = list(iter_captions(path))
        assert records and all(r.error is None for r in records), (path.name, records)
        assert not records[0].value["caption"].startswith("\ufeff")


def test_duplicate_ids_are_skips_as_documented(tmp_path):
    captions = tmp_path / "caps.jsonl"
    captions.write_bytes(caption_lines(3) + caption_lines(1))
    assert main(["import-pairs", "--captions", str(captions), "--out", str(tmp_path / "pairs")]) == 0
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    assert summary["ok"] == 3 and summary["failed"] == 0 and summary["skip_reasons"] == {"duplicate_id": 1}


def test_an_empty_input_is_warned_about(tmp_path, caplog):
    captions = tmp_path / "caps.jsonl"
    captions.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="unimo_pipe"):
        assert main(["import-pairs", "--captions", str(captions), "--out", str(tmp_path / "pairs")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no records" in warnings[0]


def test_a_file_given_for_a_folder_option_is_one_clear_error(tmp_path, capsys):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpg")
    assert main(["extract-regions", "--images", str(image), "--detector", "tiny", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{image} is a file, not a folder" in err


def test_image_names_that_leave_the_image_root_fail(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "in.jpg").write_bytes(b"jpg")
    (tmp_path / "outside.jpg").write_bytes(b"jpg")
    captions = tmp_path / "caps.jsonl"
    captions.write_text("".join(json.dumps({"id": str(i), "image": image, "caption": "a picture"}) + "\n"
                                for i, image in enumerate(["in.jpg", "../outside.jpg", str(tmp_path / "outside.jpg"),
                                                           str(root / "in.jpg")])))
    out = tmp_path / "pairs"
    assert main(["import-pairs", "--captions", str(captions), "--image-root", str(root), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["failure_reasons"] == {"image_outside_root": 2}


def test_image_list_keys_are_relative_to_the_list_folder_and_entries_outside_it_fail(tmp_path):
    lists = tmp_path / "lists"
    (lists / "imgs" / "sub").mkdir(parents=True)
    listing = lists / "list.txt"
    listing.write_bytes(BOM + f"imgs/a.jpg\nimgs/sub/b.jpg\n../outside.jpg\n{lists / 'imgs' / 'c.jpg'}\n".encode())
    options = resolve_stage_options(get_stage("extract-regions"), [Source("test", {
        "image_list": str(listing), "detector": "tiny", "out": str(tmp_path / "feats")})])
    records = list(get_stage("extract-regions").iter_records(options))
    assert [r.key for r in records if r.error is None] == ["imgs/a.jpg", "imgs/sub/b.jpg", "imgs/c.jpg"]
    assert [(r.key, r.error) for r in records if r.error] == [("list.txt:3", "image_outside_root")]
