"""The on-disk contracts: image-key resolution, the region layout, the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import (
    MANIFEST_FILE,
    TRAINING_SCHEMA_VERSION,
    ImageKeys,
    box_features_7d,
    load_manifest,
    manifest_entries,
    norm_boxes,
    uniter_soft_labels,
    write_manifest,
)


def test_an_exact_key_wins_over_name_and_stem_matches():
    keys = ImageKeys(["x.jpg", "a/x.jpg", "x.npz"])
    assert keys.resolve("a/x.jpg") == "a/x.jpg"
    assert keys.resolve("x.jpg") == "x.jpg"


def test_a_unique_file_name_or_stem_finds_the_key():
    keys = ImageKeys(["dir/b.jpg", "c.npz"])
    assert keys.resolve("val2014/b.jpg") == "dir/b.jpg"
    assert keys.resolve("c.jpg") == "c.npz"  # import-features keys npz files by their own name
    assert keys.resolve("photos/c.png") == "c.npz"


def test_two_images_with_one_file_name_are_ambiguous_never_a_silent_pick():
    keys = ImageKeys(["a/x.jpg", "b/x.jpg"], store="feats")
    with pytest.raises(RecordError, match="matches several images of feats: a/x.jpg, b/x.jpg") as caught:
        keys.resolve("x.jpg")
    assert caught.value.reason == "ambiguous_image"
    assert keys.candidates("x.jpg") == ["a/x.jpg", "b/x.jpg"]


def test_the_same_path_with_another_extension_tells_two_folders_apart():
    keys = ImageKeys(["val/x.npz", "train/x.npz", "y.npz"])
    assert keys.resolve("val/x.jpg") == "val/x.npz"
    assert keys.resolve("train/x.jpg") == "train/x.npz"
    with pytest.raises(RecordError, match="matches several"):
        keys.resolve("test/x.jpg")


def test_a_unique_file_name_is_taken_before_stems_are_compared():
    # "b/x.jpg" shares its file name with one key only; the stem step (two keys) is never reached.
    assert ImageKeys(["a/x.jpg", "x.npz"]).resolve("b/x.jpg") == "a/x.jpg"


def test_two_images_with_one_stem_are_ambiguous():
    with pytest.raises(RecordError) as caught:
        ImageKeys(["x.npz", "x.png"]).resolve("x.jpg")
    assert caught.value.reason == "ambiguous_image"


def test_a_missing_image_names_the_store():
    with pytest.raises(RecordError, match="y.jpg is not in feats") as caught:
        ImageKeys(["x.jpg"], store="feats").resolve("y.jpg")
    assert caught.value.reason == "image_not_in_features"
    for nothing in (None, "", "/"):
        with pytest.raises(RecordError):
            ImageKeys(["x.jpg"]).resolve(nothing)


def test_norm_boxes_and_the_7d_box_feature():
    norm_bb = norm_boxes(np.array([[10.0, 20.0, 50.0, 60.0]]), 100, 100)
    np.testing.assert_allclose(norm_bb, [[0.1, 0.2, 0.5, 0.6, 0.4, 0.4]], rtol=1e-6)
    assert norm_bb.dtype == np.float32
    seven = box_features_7d(norm_bb.astype(np.float16))
    assert seven.dtype == np.float16 and seven.shape == (1, 7)
    assert float(seven[0, 6]) == pytest.approx(0.16, rel=1e-3)


def test_soft_labels_put_background_first():
    probs = np.array([[0.1, 0.2, 0.7]])  # the detector's order: objects, then background
    np.testing.assert_array_equal(uniter_soft_labels(probs), [[0.7, 0.1, 0.2]])


def test_manifest_round_trip_and_checks(tmp_path):
    shard = tmp_path / "shards" / "00000"
    shard.mkdir(parents=True)
    (shard / "pairs.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    write_manifest(tmp_path, manifest_entries(tmp_path, [shard]), image_features=None)
    manifest = load_manifest(tmp_path, verify=True)
    assert manifest["schema_version"] == TRAINING_SCHEMA_VERSION
    assert manifest["totals"] == {"pair": 2, "text": 0, "image": 0}
    (shard / "pairs.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(UserError, match="does not match its checksum"):
        load_manifest(tmp_path, verify=True)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(UserError, match="schema version 99"):
        load_manifest(tmp_path)
