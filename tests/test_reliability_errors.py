"""Issue #16: mistakes and broken environments a user must fix print one line (exit 2), never a traceback."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.errors import INTERRUPTED_MESSAGE


@pytest.fixture
def captions(tmp_path):
    return write_jsonl(tmp_path / "caps.jsonl", [{"id": str(i), "image": f"{i}.jpg", "caption": f"a dog number {i}"}
                                                 for i in range(4)])


def the_error_line(capsys) -> str:
    """The one line the CLI printed for a user's mistake (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("unimo-pipe: error:")]
    assert len(lines) == 1, err
    return lines[0]


def import_pairs(captions, out, *extra) -> int:
    return main(["import-pairs", "--captions", str(captions), "--out", str(out), *extra])


def fail_opening(monkeypatch, target: pathlib.Path, error: OSError) -> None:
    """Opening `target` raises `error` (as chmod 000 or a read-only mount would, even for root)."""
    real_open = io.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and pathlib.Path(file) == target:
            raise error
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr("builtins.open", guarded_open)


# --- the file system says no ---------------------------------------------------------------------------------


def test_an_unreadable_input_file_is_one_line(tmp_path, captions, monkeypatch, capsys):
    fail_opening(monkeypatch, captions, PermissionError(errno.EACCES, "Permission denied", str(captions)))
    assert import_pairs(captions, tmp_path / "out") == 2
    line = the_error_line(capsys)
    assert "permission denied" in line and str(captions) in line


def test_a_folder_given_as_a_jsonl_caption_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "captions"
    folder.mkdir()
    assert import_pairs(folder, tmp_path / "out", "--format", "jsonl") == 2
    line = the_error_line(capsys)
    assert f"{folder} is a folder" in line


def test_out_under_a_file_is_one_line(tmp_path, captions, capsys):
    (tmp_path / "somefile").write_text("x")
    assert import_pairs(captions, tmp_path / "somefile" / "sub") == 2
    line = the_error_line(capsys)
    assert str(tmp_path / "somefile") in line and "not a folder" in line


def test_a_read_only_out_is_one_line(tmp_path, captions, monkeypatch, capsys):
    out = tmp_path / "out"
    real_mkdir = pathlib.Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only_mkdir)
    assert import_pairs(captions, out) == 2
    line = the_error_line(capsys)
    assert "read-only" in line and str(out) in line


def test_a_finished_stage_reruns_on_a_read_only_mount(tmp_path, captions, monkeypatch, capsys):
    out = tmp_path / "out"
    assert import_pairs(captions, out) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    assert import_pairs(captions, out) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_full_disk_names_the_folder_and_says_rerun_resumes(tmp_path, captions, monkeypatch, capsys):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert import_pairs(captions, tmp_path / "out") == 2
    line = the_error_line(capsys)
    assert "no space left" in line and str(tmp_path / "out") in line and "rerun" in line


def test_a_full_disk_inside_a_stage_names_its_out_folder(tmp_path, captions, monkeypatch, capsys):
    from unimo_pipe.stages.import_pairs import ImportPairs

    def disk_full(self, records, ctx):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ImportPairs, "process_shard", disk_full)
    assert import_pairs(captions, tmp_path / "out") == 2
    line = the_error_line(capsys)
    assert "no space left" in line and str(tmp_path / "out") in line and "rerun" in line


@pytest.mark.parametrize("failure", ["DiskError: mdb_txn_commit: No space left on device",
                                     "Error: mdb_txn_commit: Input/output error"])
def test_a_full_disk_during_an_lmdb_commit_names_the_store(tmp_path, failure):
    import lmdb

    from unimo_pipe.pipeline.errors import describe_os_error
    from unimo_pipe.pipeline.lmdb_store import LmdbWriter

    kind, message = failure.split(": ", 1)

    class FailingDisk:
        def begin(self, write=False):
            raise getattr(lmdb, kind)(message)

    store = tmp_path / "store"
    writer = LmdbWriter(store)
    writer._env.close()
    writer._env = FailingDisk()
    writer.put("a", 1)
    with pytest.raises(OSError) as raised:
        writer.commit()
    line = describe_os_error(raised.value)
    assert str(store) in line and "rerun" in line


# --- interrupted -----------------------------------------------------------------------------------------------


def test_ctrl_c_anywhere_in_main_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("unimo_pipe.pipeline.cli._configure_logging", interrupted)
    assert main(["validate", "x.yaml"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [INTERRUPTED_MESSAGE]


def test_ctrl_c_during_start_up_imports_is_one_line():
    interrupt_imports = (
        "import sys, runpy\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'unimo_pipe.pipeline.stage':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['unimo-pipe', '--help']\n"
        "runpy.run_module('unimo_pipe', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", interrupt_imports], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parents[1])
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [INTERRUPTED_MESSAGE]


# --- corrupt files in an output folder being resumed ------------------------------------------------------------


def test_a_corrupt_stage_record_is_one_line(tmp_path, captions, capsys):
    out = tmp_path / "out"
    assert import_pairs(captions, out) == 0
    (out / "stage.json").write_text("{garbage")
    assert import_pairs(captions, out) == 2
    line = the_error_line(capsys)
    assert str(out / "stage.json") in line and "not valid JSON" in line


def test_a_corrupt_committed_stats_file_is_one_line(tmp_path, captions, capsys):
    out = tmp_path / "out"
    assert import_pairs(captions, out) == 0
    (stats,) = out.glob("shards/*/stats.json")
    stats.write_bytes(b"\xff{")
    assert import_pairs(captions, out) == 2
    line = the_error_line(capsys)
    assert str(stats) in line and "not valid JSON" in line


# --- absurd numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["shard_size=100000000000000000000", "shard_size=1e20"])
def test_an_absurd_shard_size_is_an_option_error(tmp_path, captions, capsys, override):
    assert import_pairs(captions, tmp_path / "out", override) == 2
    line = the_error_line(capsys)
    assert "shard_size" in line


def test_an_absurd_number_from_yaml_is_an_option_error(tmp_path, captions, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"stage: import-pairs\ncaptions: [{captions}]\nshard_size: 1.0e+20\nout: {tmp_path / 'o'}\n")
    assert main(["import-pairs", "--config", str(config)]) == 2
    line = the_error_line(capsys)
    assert "shard_size" in line and "too large" in line
