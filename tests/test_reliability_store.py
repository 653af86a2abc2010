"""Issue #16 (reliability), feature stores and images: each test reproduces one reported fault."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.stages.test_extract_regions import FAST, picture
from unimo_pipe.pipeline import feature_store, lmdb_store
from unimo_pipe.pipeline import images as images_module
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.feature_store import feature_db_name, open_feature_dir

DB = feature_db_name()
IMAGES = 18
SHARD_SIZE = 6


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` sees it."""


def npz_folder(root: Path, count: int = IMAGES) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        n = 10 + i % 3
        np.savez(root / f"img{i:02d}.npz", features=rng.standard_normal((n, 16)).astype(np.float16),
                 norm_bb=rng.uniform(0, 1, (n, 6)).astype(np.float16))
    return root


def import_features(source: Path, out: Path, *extra: str) -> int:
    return main(["import-features", "--source", str(source), "--out", str(out), "--shard-size", str(SHARD_SIZE),
                 *extra])


def stored_images(out: Path) -> set[str]:
    """The merged store's images, each checked readable; the reader is closed so a later run may write."""
    reader = open_feature_dir(out)
    try:
        names = set(reader.name2nbb)
        for name in names:
            assert reader.get_dump(name)["features"].shape[0] == reader.name2nbb[name]
        return names
    finally:
        reader.db.close()


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def kill_inside_merge(monkeypatch, target, attribute: str, after: int, *, only_shards: bool = False) -> None:
    """`target.attribute` raises Killed on its call number `after` + 1 made inside the final merge
    (`only_shards`: counting only calls on paths under OUT/shards)."""
    original, calls, merging = getattr(target, attribute), [0], [False]

    def counting(*args, **kwargs):
        if merging[0] and (not only_shards or "shards" in Path(args[0]).parts):
            calls[0] += 1
            if calls[0] > after:
                raise Killed()
        return original(*args, **kwargs)

    real_merge = feature_store.merge_feature_shards

    def merge(*args, **kwargs):
        merging[0] = True
        try:
            return real_merge(*args, **kwargs)
        finally:
            merging[0] = False

    monkeypatch.setattr(target, attribute, counting)
    monkeypatch.setattr(feature_store, "merge_feature_shards", merge)


@pytest.mark.parametrize(("target", "attribute", "after", "only_shards"), [
    (lmdb_store.LmdbWriter, "put_raw", 0, False),
    (lmdb_store.LmdbWriter, "put_raw", 7, False),
    (shutil, "rmtree", 0, True),  # while removing the per-shard stores
    (shutil, "rmtree", 1, True),
    (shutil, "rmtree", 2, True),
    (os, "replace", 1, False),  # between the sidecars
], ids=["put0", "put7", "shard-rmtree0", "shard-rmtree1", "shard-rmtree2", "replace1"])
def test_a_kill_inside_the_final_merge_then_a_resume_keeps_every_image(tmp_path, monkeypatch, target, attribute,
                                                                       after, only_shards):
    source, out = npz_folder(tmp_path / "npz"), tmp_path / "feats"
    with monkeypatch.context() as patch:
        kill_inside_merge(patch, target, attribute, after, only_shards=only_shards)
        with pytest.raises(Killed):
            import_features(source, out)
    assert not (out / "summary.json").exists()
    assert import_features(source, out) == 0
    assert summary_of(out)["ok"] == IMAGES
    assert len(stored_images(out)) == IMAGES
    assert not (out / "shards" / "00000" / DB).exists()  # per-shard copies go once the merge is durable


def test_a_deleted_committed_shard_is_redone_and_the_store_keeps_every_image(tmp_path):
    source, out = npz_folder(tmp_path / "npz"), tmp_path / "feats"
    assert import_features(source, out) == 0
    shutil.rmtree(out / "shards" / "00001")
    assert import_features(source, out) == 0
    assert summary_of(out)["ok"] == IMAGES
    assert len(stored_images(out)) == IMAGES


def killed_at_the_first_merge_write(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """(source, out) of an import-features run killed as its final merge starts: every shard committed."""
    source, out = npz_folder(tmp_path / "npz"), tmp_path / "feats"
    with monkeypatch.context() as patch:
        kill_inside_merge(patch, lmdb_store.LmdbWriter, "put_raw", 0)
        with pytest.raises(Killed):
            import_features(source, out)
    return source, out


def test_a_committed_shard_whose_store_is_gone_is_one_clear_error_not_a_complete_run(tmp_path, monkeypatch, capsys):
    source, out = killed_at_the_first_merge_write(tmp_path, monkeypatch)
    shutil.rmtree(out / "shards" / "00001" / DB)
    assert import_features(source, out) == 2
    error = capsys.readouterr().err
    assert "shards/00001" in error and "delete" in error and "Traceback" not in error
    assert not (out / "summary.json").exists()
    shutil.rmtree(out / "shards" / "00001")  # the fix the message names
    assert import_features(source, out) == 0
    assert len(stored_images(out)) == IMAGES


def test_a_shard_store_missing_images_is_never_reported_complete(tmp_path, monkeypatch, capsys):
    source, out = killed_at_the_first_merge_write(tmp_path, monkeypatch)
    stats_path = out / "shards" / "00002" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats_path.write_text(json.dumps({**stats, "ok": stats["ok"] + 1}))  # it claims an image its store lacks
    assert import_features(source, out) == 2
    assert "shards/00002" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_two_sequential_runs_on_one_out_keep_every_image(tmp_path):
    source, out = npz_folder(tmp_path / "npz"), tmp_path / "feats"
    for _ in range(3):
        assert import_features(source, out) == 0
        assert len(stored_images(out)) == IMAGES


def test_workers_that_finish_one_after_the_other_keep_every_image(tmp_path):
    source, out = npz_folder(tmp_path / "npz"), tmp_path / "feats"
    assert import_features(source, out, "--shard", "0/2") == 0
    assert not (out / "summary.json").exists()
    assert import_features(source, out, "--shard", "1/2") == 0
    assert import_features(source, out, "--shard", "0/2") == 0
    assert len(stored_images(out)) == IMAGES


def tiny_images(root: Path, sizes: list[tuple[int, int]]) -> Path:
    root.mkdir(parents=True)
    for i, (width, height) in enumerate(sizes):
        picture(width, height, i).save(root / f"im{i}.png")
    return root


def extract_regions(images: Path, out: Path, *extra: str) -> int:
    return main(["extract-regions", "--images", str(images), "--out", str(out), *FAST, *extra])


def test_two_sequential_extract_regions_runs_on_one_out_keep_every_image(tmp_path):
    images, out = tiny_images(tmp_path / "images", [(40, 30), (30, 40), (32, 32)]), tmp_path / "feats"
    for _ in range(2):
        assert extract_regions(images, out, "--shard-size", "2") == 0
        assert len(stored_images(out)) == 3


def test_a_kill_inside_extract_regions_final_merge_then_a_resume_keeps_every_image(tmp_path, monkeypatch):
    images, out = tiny_images(tmp_path / "images", [(40, 30), (30, 40), (32, 32), (36, 28)]), tmp_path / "feats"
    with monkeypatch.context() as patch:
        kill_inside_merge(patch, shutil, "rmtree", 1, only_shards=True)  # after the first shard's copy went
        with pytest.raises(Killed):
            extract_regions(images, out, "--shard-size", "2")
    assert not (out / "summary.json").exists()
    assert extract_regions(images, out, "--shard-size", "2") == 0
    assert summary_of(out)["ok"] == 4 and len(stored_images(out)) == 4


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode()


def butd_row(image_id: str, width: float, height: float, boxes: np.ndarray, features: np.ndarray) -> str:
    return f"{image_id}\t{width}\t{height}\t{len(boxes)}\t{b64(boxes)}\t{b64(features)}\n"


def good_boxes(n: int = 10) -> np.ndarray:
    xy = np.linspace(0, 50, n, dtype=np.float32)[:, None].repeat(2, axis=1)
    return np.concatenate([xy, xy + 20], axis=1)


def good_features(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


@pytest.mark.parametrize("shard_args", [(), ("--shard-size", "1"), ("--shard-size", "1", "--shard", "W/2")],
                         ids=["one-shard", "shard-each", "two-workers"])
def test_a_duplicate_image_id_is_skipped_not_counted_ok_twice(tmp_path, shard_args):
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text(butd_row("img1", 100, 80, good_boxes(), good_features(seed=1))
                     + butd_row("img2", 100, 80, good_boxes(), good_features(seed=2))
                     + butd_row("img1", 100, 80, good_boxes(), good_features(seed=3)))
    second.write_text(butd_row("img2", 100, 80, good_boxes(), good_features(seed=4)))
    out = tmp_path / "feats"
    workers = ["0", "1"] if "W/2" in shard_args else [None]
    for worker in workers:
        args = [a.replace("W", worker) if worker else a for a in shard_args]
        assert main(["import-features", "--source", str(first), str(second), "--out", str(out), *args]) == 0
    summary = summary_of(out)
    assert summary["ok"] == 2 and summary["skip_reasons"] == {"duplicate_image": 2}
    reader = open_feature_dir(out)
    assert sorted(reader.name2nbb) == ["img1", "img2"]
    np.testing.assert_allclose(reader["img1"][0], good_features(seed=1), atol=1e-2)  # the first one is kept
    reader.db.close()


@pytest.mark.parametrize(("width", "height"), [(0, 80), (100, 0), (-5, 80), ("nan", 80)])
def test_a_zero_or_bad_image_size_is_a_counted_failure_not_inf_boxes(tmp_path, width, height):
    tsv = tmp_path / "f.tsv"
    tsv.write_text(butd_row("bad", width, height, good_boxes(), good_features())
                   + butd_row("good", 100, 80, good_boxes(), good_features()))
    out = tmp_path / "feats"
    assert main(["import-features", "--source", str(tsv), "--out", str(out)]) == 0
    assert summary_of(out)["failure_reasons"] == {"invalid_image_size": 1}
    assert sorted(stored_images(out)) == ["good"]


def test_a_zero_image_size_in_a_butd_npz_is_a_counted_failure(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "x.npz", x=good_features(), bbox=good_boxes(), image_w=np.array(0), image_h=np.array(80))
    out = tmp_path / "feats"
    assert main(["import-features", "--source", str(folder), "--out", str(out)]) == 0
    assert summary_of(out)["failure_reasons"] == {"invalid_image_size": 1}


def nan_at(array: np.ndarray, value: float) -> np.ndarray:
    array = array.copy()
    array[1, 1] = value
    return array


@pytest.mark.parametrize("bad", ["nan-features", "inf-boxes", "f16-overflow"])
def test_non_finite_features_or_boxes_are_a_counted_failure(tmp_path, bad):
    features, boxes = good_features(), good_boxes()
    if bad == "nan-features":
        features = nan_at(features, np.nan)
    elif bad == "inf-boxes":
        boxes = nan_at(boxes, np.inf)
    else:
        features = nan_at(features, 1e6)  # finite in float32, inf once stored as UNITER's float16
    tsv = tmp_path / "f.tsv"
    tsv.write_text(butd_row("bad", 100, 80, boxes, features) + butd_row("good", 100, 80, good_boxes(), good_features()))
    out = tmp_path / "feats"
    assert main(["import-features", "--source", str(tsv), "--out", str(out)]) == 0
    assert summary_of(out)["failure_reasons"] == {"non_finite_values": 1}
    assert sorted(stored_images(out)) == ["good"]


def test_non_finite_values_in_a_uniter_npz_are_a_counted_failure(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "x.npz", features=good_features(), norm_bb=nan_at(np.full((10, 6), 0.5), np.nan))
    out = tmp_path / "feats"
    assert main(["import-features", "--source", str(folder), "--out", str(out)]) == 0
    assert summary_of(out)["failure_reasons"] == {"non_finite_values": 1}


@pytest.mark.parametrize(("width", "height"), [(1, 3000), (3000, 1)])
def test_a_one_pixel_wide_image_is_extracted_not_the_end_of_the_run(tmp_path, width, height):
    images = tiny_images(tmp_path / "images", [(40, 30), (width, height)])
    out = tmp_path / "feats"
    assert extract_regions(images, out) == 0
    assert summary_of(out)["ok"] == 2
    reader = open_feature_dir(out)
    assert reader.meta["im1.png"] == {"width": width, "height": height}
    features, norm_bb = reader["im1.png"]
    assert np.isfinite(norm_bb).all() and (norm_bb >= 0).all() and (norm_bb <= 1).all()
    reader.db.close()
    batched = tmp_path / "batched"  # padded beside a larger image: the same as alone
    assert extract_regions(images, batched, "--batch-size", "2") == 0
    reader = open_feature_dir(batched)
    np.testing.assert_allclose(reader["im1.png"][0], features, atol=1e-2)
    reader.db.close()


def test_a_file_name_that_is_not_utf8_is_a_counted_failure_not_a_crash(tmp_path):
    images = tiny_images(tmp_path / "images", [(40, 30), (30, 40)])
    picture(32, 32, 7).save(images / os.fsdecode(b"bad\xff.png"), format="PNG")
    out = tmp_path / "feats"
    assert extract_regions(images, out) == 0
    summary = summary_of(out)
    assert summary["ok"] == 2 and summary["failure_reasons"] == {"undecodable_file_name": 1}
    assert sorted(stored_images(out)) == ["im0.png", "im1.png"]
    assert extract_regions(images, out) == 0  # the rerun's fingerprint of --images matches


def test_an_npz_file_name_that_is_not_utf8_is_a_counted_failure_not_a_crash(tmp_path):
    folder = npz_folder(tmp_path / "npz", count=2)
    np.savez(folder / os.fsdecode(b"bad\xff.npz"), features=good_features(), norm_bb=np.full((10, 6), 0.5))
    out = tmp_path / "feats"
    assert main(["import-features", "--source", str(folder), "--out", str(out)]) == 0
    summary = summary_of(out)
    assert summary["ok"] == 2 and summary["failure_reasons"] == {"undecodable_file_name": 1}
    stats = json.loads((out / "shards" / "00000" / "stats.json").read_text())
    assert stats["failure_examples"][0]["record"] == "bad\\xff.npz"


def test_a_missing_image_has_its_own_reason_not_corrupt_image(tmp_path):
    images = tiny_images(tmp_path / "images", [(40, 30)])
    listing = images / "list.txt"
    listing.write_text("im0.png\ngone.png\n")
    out = tmp_path / "feats"
    assert main(["extract-regions", "--image-list", str(listing), "--out", str(out), *FAST]) == 0
    assert summary_of(out)["failure_reasons"] == {"missing_image": 1}


def test_an_unreadable_image_has_its_own_reason_not_corrupt_image(tmp_path, monkeypatch):
    path = tiny_images(tmp_path / "images", [(40, 30)]) / "im0.png"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))  # chmod does not stop root, who runs CI

    monkeypatch.setattr(images_module.Image, "open", refuse)
    with pytest.raises(RecordError) as caught:
        images_module.load_rgb(path)
    assert caught.value.reason == "unreadable_image"
