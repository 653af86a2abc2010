"""The UNITER image-db layout, checked with a reader that does exactly what UNITER's DetectFeatLmdb does."""

from __future__ import annotations

import json

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from unimo_pipe.pipeline.feature_store import (
    RegionFeatureReader,
    RegionFeatureWriter,
    feature_db_name,
    nbb_file_name,
)


def make_regions(n: int, dim: int = 2048, classes: int = 1601, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(0, 0.5, (n, 2))
    x2y2 = x1y1 + rng.uniform(0.1, 0.5, (n, 2))
    norm_bb = np.concatenate([x1y1, x2y2, x2y2 - x1y1], axis=1)
    soft = rng.dirichlet(np.ones(classes), n)
    return {"features": rng.standard_normal((n, dim)), "norm_bb": norm_bb,
            "conf": np.sort(rng.uniform(0.2, 1, n))[::-1], "soft_labels": soft,
            "boxes": norm_bb[:, :4] * 100.0}


def uniter_detect_feat_lmdb_get_dump(img_dir, name, conf_th=0.2, max_bb=100, min_bb=10):
    """UNITER data/data.py DetectFeatLmdb (compress=False): name2nbb from the json, msgpack.loads(raw=False)
    with msgpack_numpy patched, f16 -> f32, every array sliced [:nbb]."""
    saved = {name: getattr(msgpack, name) for name in ("loads", "unpackb", "dumps", "packb", "Packer", "Unpacker",
                                                         "load", "dump", "pack", "unpack")}
    msgpack_numpy.patch()
    try:
        name2nbb = json.load(open(f"{img_dir}/nbb_th{conf_th}_max{max_bb}_min{min_bb}.json"))
        env = lmdb.open(f"{img_dir}/feat_th{conf_th}_max{max_bb}_min{min_bb}", readonly=True, create=False)
        txn = env.begin(buffers=True)
        dump = msgpack.loads(txn.get(name.encode("utf-8")), raw=False)
        nbb = name2nbb[name]
        dump = {k: arr.astype(np.float32) if arr.dtype == np.float16 else arr for k, arr in dump.items()}
        result = {k: arr[:nbb, ...] for k, arr in dump.items()}
        env.close()
        return result, nbb
    finally:
        for name, value in saved.items():
            setattr(msgpack, name, value)


def test_layout_names_match_uniter():
    assert feature_db_name() == "feat_th0.2_max100_min10"
    assert nbb_file_name() == "nbb_th0.2_max100_min10.json"


def test_uniter_reader_reads_our_store_unchanged(tmp_path):
    regions = {"a/x.jpg": make_regions(12), "y.jpg": make_regions(37, seed=1)}
    with RegionFeatureWriter(tmp_path) as writer:
        for name, arrays in regions.items():
            writer.add(name, arrays, meta={"width": 640, "height": 480})
    for name, arrays in regions.items():
        dump, nbb = uniter_detect_feat_lmdb_get_dump(str(tmp_path), name)
        assert nbb == len(arrays["conf"])
        assert dump["features"].shape == (nbb, 2048) and dump["soft_labels"].shape == (nbb, 1601)
        np.testing.assert_allclose(dump["features"], arrays["features"].astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(dump["norm_bb"], arrays["norm_bb"].astype(np.float16).astype(np.float32))
        assert set(dump) == {"features", "norm_bb", "conf", "soft_labels", "boxes"}
    raw = lmdb.open(str(tmp_path / feature_db_name()), readonly=True).begin().get(b"y.jpg")
    stored = msgpack.unpackb(raw, object_hook=msgpack_numpy.decode, raw=False)
    assert all(stored[k].dtype == np.float16 for k in ("features", "norm_bb", "conf", "soft_labels"))


def test_our_reader_matches_uniter_reader(tmp_path):
    with RegionFeatureWriter(tmp_path) as writer:
        writer.add("img.jpg", make_regions(15), meta={"width": 10, "height": 20})
    theirs, _ = uniter_detect_feat_lmdb_get_dump(str(tmp_path), "img.jpg")  # lmdb allows one open per process
    reader = RegionFeatureReader(tmp_path)
    ours = reader.get_dump("img.jpg")
    assert set(ours) == set(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])
    features, norm_bb = reader["img.jpg"]
    assert features.dtype == np.float32 and norm_bb.shape == (15, 6)
    assert reader.meta["img.jpg"] == {"width": 10, "height": 20} and len(reader) == 1 and "img.jpg" in reader


def uniter_detect_feat_lmdb_getitem(img_dir, name, conf_th=0.2, max_bb=100, min_bb=10):
    """UNITER's DetectFeatLmdb.__getitem__: the dump, then features and norm_bb cut to nbb, as float32."""
    saved = {name: getattr(msgpack, name) for name in ("loads", "unpackb")}
    msgpack_numpy.patch()
    try:
        name2nbb = json.load(open(f"{img_dir}/nbb_th{conf_th}_max{max_bb}_min{min_bb}.json"))
        env = lmdb.open(f"{img_dir}/feat_th{conf_th}_max{max_bb}_min{min_bb}", readonly=True, create=False)
        dump = msgpack.loads(env.begin(buffers=True).get(name.encode("utf-8")), raw=False)
        nbb = name2nbb[name]
        features, norm_bb = dump["features"][:nbb, :].astype(np.float32), dump["norm_bb"][:nbb, :].astype(np.float32)
        env.close()
        return features, norm_bb
    finally:
        for name, value in saved.items():
            setattr(msgpack, name, value)


def test_getitem_and_dump_equal_uniters_when_the_store_holds_more_boxes_than_nbb(tmp_path):
    # UNITER's stores keep every detected box and name2nbb says how many pass conf_th: cut first, same values.
    with RegionFeatureWriter(tmp_path) as writer:
        writer.add("img.jpg", make_regions(30, seed=3))
    (tmp_path / nbb_file_name()).write_text(json.dumps({"img.jpg": 11}))
    theirs_features, theirs_norm_bb = uniter_detect_feat_lmdb_getitem(str(tmp_path), "img.jpg")
    theirs_dump, _ = uniter_detect_feat_lmdb_get_dump(str(tmp_path), "img.jpg")
    reader = RegionFeatureReader(tmp_path)
    features, norm_bb = reader["img.jpg"]
    assert features.dtype == norm_bb.dtype == np.float32 and features.shape == (11, 2048)
    np.testing.assert_array_equal(features, theirs_features)
    np.testing.assert_array_equal(norm_bb, theirs_norm_bb)
    dump = reader.get_dump("img.jpg")
    assert set(dump) == set(theirs_dump)
    for key in dump:
        assert dump[key].dtype == theirs_dump[key].dtype
        np.testing.assert_array_equal(dump[key], theirs_dump[key])
    assert set(reader.get_dump("img.jpg", ("features", "conf"))) == {"features", "conf"}


def test_per_image_scalars_are_refused_in_the_lmdb_value(tmp_path):
    regions = make_regions(10)
    regions["image_w"] = np.array(640)
    with pytest.raises(ValueError, match="image_w.*first dimension 10"):
        RegionFeatureWriter(tmp_path).add("x.jpg", regions)


def test_mismatched_box_counts_are_refused(tmp_path):
    regions = make_regions(10)
    regions["conf"] = regions["conf"][:9]
    with pytest.raises(ValueError, match="conf.*first dimension 10"):
        RegionFeatureWriter(tmp_path).add("x.jpg", regions)
