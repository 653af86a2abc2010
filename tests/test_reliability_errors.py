"""Issue #16: mistakes and broken environments a user must fix print one line (exit 2), never a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import random
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

    real_open = os.open

    def open_read_only(path, flags, *args, **kwargs):  # the lock files: only a read-only open works
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    monkeypatch.setattr("unimo_pipe.pipeline.locks.os.open", open_read_only)
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


# --- inputs of the wrong kind ---------------------------------------------------------------------------------


def test_karpathy_format_on_a_json_list_is_one_line(tmp_path, capsys):
    listing = tmp_path / "list.json"
    listing.write_text('[{"a": 1}]')
    assert import_pairs(listing, tmp_path / "out", "--format", "karpathy") == 2
    line = the_error_line(capsys)
    assert str(listing) in line and "karpathy" in line.lower()


def extract_regions(tmp_path, *extra) -> int:
    return main(["extract-regions", "--detector", "tiny", "--out", str(tmp_path / "feats"), *extra])


def test_a_non_utf8_name_in_an_image_list_is_a_counted_failure(tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_bytes(b"\xff\xfe a.jpg\n")
    assert extract_regions(tmp_path, "--image-list", str(listing)) == 0  # one bad name never ends the run
    summary = json.loads((tmp_path / "feats" / "summary.json").read_text())
    assert summary["failure_reasons"] == {"undecodable_file_name": 1}


def test_a_folder_as_image_list_is_one_line(tmp_path, capsys):
    assert extract_regions(tmp_path, "--image-list", str(tmp_path)) == 2
    assert f"{tmp_path} is a folder" in the_error_line(capsys)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_random_bytes_as_detector_weights_are_one_line(tmp_path, capsys, suffix):
    weights = tmp_path / f"weights{suffix}"
    weights.write_bytes(random.Random(0).randbytes(4096))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"the model loads before the first image")
    assert main(["extract-regions", "--images", str(images), "--weights", str(weights),
                 "--out", str(tmp_path / "feats")]) == 2
    line = the_error_line(capsys)
    assert str(weights) in line and "weights_only" not in line


def test_augment_on_an_import_corpus_output_names_the_stage(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A dog runs in the park.\n")
    assert main(["import-corpus", "--text-corpus", str(corpus), "--out", str(tmp_path / "corpus")]) == 0
    capsys.readouterr()
    assert main(["augment", "--captions", str(tmp_path / "corpus"), "--scene-graph",
                 "--out", str(tmp_path / "aug")]) == 2
    line = the_error_line(capsys)
    assert f"{tmp_path / 'corpus'} is output of `import-corpus`" in line and "import-pairs" in line


def test_a_corpus_without_one_valid_line_is_one_line(tmp_path, captions, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\xff\xfe\n\x80\x81\n")
    assert main(["retrieve", "--pairs", str(captions), "--text-corpus", str(corpus),
                 "--out", str(tmp_path / "retrieval")]) == 2
    assert "no usable" in the_error_line(capsys)


# --- no GPU --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, captions, no_cuda, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"not really")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A dog runs in the park.\n")
    models = tmp_path / "m"
    models.mkdir()
    commands = [
        ["extract-regions", "--images", str(images), "--detector", "tiny"],
        ["retrieve", "--pairs", str(captions), "--text-corpus", str(corpus)],
        ["augment", "--captions", str(captions), "--backtranslate", "--bt-model", f"en-de={models}",
         f"de-en={models}"],
    ]
    for number, command in enumerate(commands):
        assert main([*command, "--device", "cuda", "--out", str(tmp_path / f"out{number}")]) == 2, command
        line = the_error_line(capsys)
        assert "no CUDA device" in line and "--device cpu" in line


# --- damaged stores and checkpoints ----------------------------------------------------------------------------


def fake_feature_store(folder: pathlib.Path) -> pathlib.Path:
    from unimo_pipe.pipeline.lmdb_store import LmdbWriter

    with LmdbWriter(folder / "feat_th0.2_max100_min10") as writer:
        writer.put_raw("a.jpg", b"\xc1\xc1 not msgpack")
    (folder / "nbb_th0.2_max100_min10.json").write_text('{"a.jpg": 10}')
    return folder / "feat_th0.2_max100_min10"


def test_an_lmdb_of_random_bytes_is_one_line(tmp_path, capsys):
    store = fake_feature_store(tmp_path / "feats")
    data = store / "data.mdb"
    data.write_bytes(random.Random(0).randbytes(data.stat().st_size))
    assert main(["export-features", str(tmp_path / "feats"), "--output", str(tmp_path / "x.h5")]) == 2
    line = the_error_line(capsys)
    assert str(store) in line and "damaged" in line


def test_an_lmdb_value_that_is_not_msgpack_is_one_line(tmp_path, capsys):
    store = fake_feature_store(tmp_path / "feats")
    assert main(["export-features", str(tmp_path / "feats"), "--output", str(tmp_path / "x.h5")]) == 2
    line = the_error_line(capsys)
    assert str(store) in line and "a.jpg" in line and "damaged" in line


def test_an_h5_of_random_bytes_is_one_line(tmp_path, capsys):
    source = tmp_path / "x.h5"
    source.write_bytes(random.Random(0).randbytes(4096))
    assert main(["import-features", "--source", str(source), "--out", str(tmp_path / "feats")]) == 2
    line = the_error_line(capsys)
    assert str(source) in line and "HDF5" in line


def torch_checkpoints(folder: pathlib.Path) -> list[pathlib.Path]:
    """A truncated .pt, a garbled .pt, a .pt holding a class (refused, never unpickled), a garbled .safetensors."""
    import collections

    import torch

    whole = folder / "whole.pt"
    torch.save({"model": {"w": torch.zeros(64, 64)}, "step": 3}, whole)
    truncated = folder / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    garbled = folder / "garbled.pt"
    garbled.write_bytes(random.Random(0).randbytes(4096))
    foreign = folder / "foreign.pt"
    torch.save({"when": collections.Counter(a=1), "x": __import__("datetime").date(2020, 1, 1)}, foreign)
    safetensors = folder / "garbled.safetensors"
    safetensors.write_bytes(random.Random(0).randbytes(4096))
    return [truncated, garbled, foreign, safetensors]


def test_a_damaged_checkpoint_is_one_line_without_torch_advice(tmp_path):
    from unimo_pipe.pipeline.checkpoints import load_checkpoint
    from unimo_pipe.pipeline.errors import UserError

    for checkpoint in torch_checkpoints(tmp_path):
        with pytest.raises(UserError) as raised:
            load_checkpoint(checkpoint)
        message = str(raised.value)
        assert str(checkpoint) in message and "\n" not in message and "weights_only" not in message, message


def test_a_saved_model_with_damaged_weights_is_one_line(tmp_path):
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder
    from unimo_pipe.pipeline.errors import UserError

    folder = tmp_path / "model"
    UnifiedModel(tiny_encoder(50), region_dim=8).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError) as raised:
        UnifiedModel.from_pretrained(folder)
    assert str(folder) in str(raised.value) and "weights_only" not in str(raised.value)


def test_a_saved_model_with_another_models_weights_is_one_line(tmp_path):
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder
    from unimo_pipe.pipeline.errors import UserError

    UnifiedModel(tiny_encoder(50), region_dim=8).save_pretrained(tmp_path / "model")
    UnifiedModel(tiny_encoder(50, hidden=16), region_dim=8).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "model" / "model.safetensors")
    with pytest.raises(UserError) as raised:
        UnifiedModel.from_pretrained(tmp_path / "model")
    assert str(tmp_path / "model") in str(raised.value) and "\n" not in str(raised.value)


def test_any_random_bytes_as_a_checkpoint_are_a_damaged_file_error(tmp_path):
    # About 1 file in 16 of random bytes fails inside torch's unpickler with IndexError or KeyError.
    from unimo_pipe.pipeline.checkpoints import load_checkpoint
    from unimo_pipe.pipeline.errors import CorruptFileError

    rng = random.Random(1)
    path = tmp_path / "w.pt"
    for _ in range(200):
        path.write_bytes(rng.randbytes(512))
        with pytest.raises(CorruptFileError, match="is not a readable checkpoint"):
            load_checkpoint(path)
