from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.pipeline.test_feature_store import uniter_detect_feat_lmdb_get_dump
from unimo_pipe.models.extractor import RegionExtractor
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import open_feature_dir

FAST = ["--detector", "tiny", "--min-size", "64", "--max-size", "96", "--workers", "0"]


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    picture(80, 60, 0).save(root / "a" / "same.jpg")
    picture(50, 90, 1).save(root / "b" / "same.jpg")  # same file name, other folder
    picture(64, 64, 2).convert("L").save(root / "gray.png")
    picture(64, 48, 3).convert("CMYK").save(root / "cmyk.jpg")
    picture(48, 48, 4).convert("P").save(root / "palette.gif")
    rgba = picture(40, 40, 5).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    rotated = picture(60, 30, 6)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    rotated.save(root / "rotated.jpg", exif=exif)
    return root


def add_bad_files(root: Path) -> None:
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    good = (root / "a" / "same.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    png = bytearray((root / "gray.png").read_bytes())
    png[len(png) // 2 : len(png) // 2 + 64] = b"\xff" * 64  # valid header, garbage pixel data
    (root / "corrupt.png").write_bytes(bytes(png))
    picture(400, 400, 9).save(root / "huge.png")  # refused by --max-pixels below
    (root / "notes.txt").write_text("ignored: not an image suffix")


def test_extraction_end_to_end_with_every_kind_of_input(tmp_path, image_dir):
    add_bad_files(image_dir)
    out = tmp_path / "feats"
    assert main(["extract-regions", "--images", str(image_dir), "--out", str(out), "--max-pixels", "100000",
                 "--batch-size", "3", "--shard-size", "5", *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 12 and summary["ok"] == 7
    assert summary["failure_reasons"] == {"empty_file": 1, "not_an_image": 1, "corrupt_image": 2,
                                          "decompression_bomb": 1}
    reader = open_feature_dir(out)
    assert sorted(reader.name2nbb) == ["a/same.jpg", "alpha.png", "b/same.jpg", "cmyk.jpg", "gray.png",
                                       "palette.gif", "rotated.jpg"]
    assert reader.meta["rotated.jpg"] == {"width": 30, "height": 60}  # EXIF orientation applied
    assert reader.meta["b/same.jpg"] == {"width": 50, "height": 90}
    for name, nbb in reader.name2nbb.items():
        dump = reader.db[name]
        assert 10 <= nbb <= 100
        assert dump["features"].dtype == np.float16 and dump["features"].shape == (nbb, 128)
        assert dump["norm_bb"].dtype == np.float16 and dump["norm_bb"].shape == (nbb, 6)
        assert dump["soft_labels"].shape == (nbb, 1601) and dump["conf"].shape == (nbb,)
        conf = dump["conf"].astype(np.float32)
        assert (np.diff(conf) <= 1e-3).all()  # best first
        width, height = reader.meta[name]["width"], reader.meta[name]["height"]
        boxes = dump["boxes"]
        expected = np.stack([boxes[:, 0] / width, boxes[:, 1] / height, boxes[:, 2] / width, boxes[:, 3] / height,
                             (boxes[:, 2] - boxes[:, 0]) / width, (boxes[:, 3] - boxes[:, 1]) / height], axis=1)
        np.testing.assert_allclose(dump["norm_bb"].astype(np.float32), expected, atol=2e-3)
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    assert not (out / "shards" / "00000" / "feat_th0.2_max100_min10").exists()  # merged, shard copies removed


def test_uniter_reads_the_merged_store(tmp_path, image_dir):
    out = tmp_path / "feats"
    assert main(["extract-regions", "--images", str(image_dir), "--out", str(out), *FAST]) == 0
    dump, nbb = uniter_detect_feat_lmdb_get_dump(str(out), "a/same.jpg")
    assert dump["features"].shape[0] == nbb and dump["features"].dtype == np.float32
    assert set(dump) >= {"features", "norm_bb", "conf", "soft_labels", "boxes", "attr_ids", "attr_conf"}


def test_soft_labels_put_background_first(tmp_path, image_dir, monkeypatch):
    from unimo_pipe.models import detector as detector_module

    captured = {}
    original = detector_module.BottomUpAttention._select

    def spy(self, *args):
        found = original(self, *args)
        captured.setdefault("probs", found.class_probs.clone())
        return found

    monkeypatch.setattr(detector_module.BottomUpAttention, "_select", spy)
    out = tmp_path / "feats"
    assert main(["extract-regions", "--images", str(image_dir / "a"), "--out", str(out), *FAST]) == 0
    soft = open_feature_dir(out).db["same.jpg"]["soft_labels"].astype(np.float32)
    probs = captured["probs"].numpy()
    np.testing.assert_allclose(soft[:, 0], probs[:, 1600], atol=1e-3)  # background: last -> first
    np.testing.assert_allclose(soft[:, 1:], probs[:, :1600], atol=1e-3)


def test_batch_size_does_not_change_the_output(tmp_path, image_dir):
    stores = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}"
        assert main(["extract-regions", "--images", str(image_dir), "--out", str(out), "--batch-size", batch,
                     *FAST]) == 0
        stores.append(open_feature_dir(out))
    for name in stores[0].name2nbb:
        one, four = stores[0].db[name], stores[1].db[name]
        assert stores[0].name2nbb[name] == stores[1].name2nbb[name]
        np.testing.assert_allclose(one["features"].astype(np.float32), four["features"].astype(np.float32),
                                   atol=2e-3, rtol=1e-2)


def test_resume_after_a_crash_mid_run(tmp_path, image_dir, monkeypatch):
    out = tmp_path / "feats"
    args = ["extract-regions", "--images", str(image_dir), "--out", str(out), "--shard-size", "3", *FAST]
    original = RegionExtractor.run
    calls = {"n": 0}

    def crash_on_second_shard(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        yield from original(self, items)

    monkeypatch.setattr(RegionExtractor, "run", crash_on_second_shard)
    assert main(args) == 130
    assert (out / "shards" / "00000" / "stats.json").is_file() and not (out / "summary.json").exists()
    seen = []

    def record_calls(self, items):
        seen.extend(key for key, _ in items)
        yield from original(self, items)

    monkeypatch.setattr(RegionExtractor, "run", record_calls)
    assert main(args) == 0
    assert len(seen) == 4  # shards 1 and 2 only: shard 0 was kept
    assert len(open_feature_dir(out).name2nbb) == 7


def test_image_list_and_option_checks(tmp_path, image_dir, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("images/a/same.jpg\n# comment\nimages/gray.png\n")
    out = tmp_path / "feats"
    assert main(["extract-regions", "--image-list", str(listing), "--out", str(out), *FAST]) == 0
    assert sorted(open_feature_dir(out).name2nbb) == ["images/a/same.jpg", "images/gray.png"]
    assert main(["extract-regions", "--out", str(tmp_path / "x"), "--detector", "butd-r101", "--min-boxes", "20",
                 "--max-boxes", "5"]) == 2
    err = capsys.readouterr().err
    assert "exactly one of --images" in err and "needs --weights" in err and "min_boxes (20)" in err


def test_weights_written_by_make_tiny_models_load(tmp_path, image_dir):
    assert main(["make-tiny-models", str(tmp_path / "models")]) == 0
    weights = tmp_path / "models" / "detector-tiny.safetensors"
    assert main(["extract-regions", "--images", str(image_dir / "a"), "--out", str(tmp_path / "w"), "--weights",
                 str(weights), *FAST]) == 0
    assert main(["extract-regions", "--images", str(image_dir / "a"), "--out", str(tmp_path / "r"), *FAST]) == 0
    with_file = open_feature_dir(tmp_path / "w").db["same.jpg"]["features"]
    random = open_feature_dir(tmp_path / "r").db["same.jpg"]["features"]
    np.testing.assert_array_equal(with_file, random)  # same seed 0 weights, through the file


def test_an_image_without_proposals_is_written_empty_and_counted(tmp_path, image_dir, monkeypatch):
    import torch

    from unimo_pipe.models import detector as detector_module

    monkeypatch.setattr(detector_module.BottomUpAttention, "_proposals", lambda self, *args: torch.zeros(0, 5))
    out = tmp_path / "feats"
    assert main(["extract-regions", "--images", str(image_dir / "a"), "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["counters"] == {"images_without_boxes": 1}
    assert open_feature_dir(out).name2nbb == {"same.jpg": 0}
