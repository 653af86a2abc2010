from __future__ import annotations

import base64
import json

import numpy as np

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter, open_feature_dir
from unimo_pipe.pipeline.hdf5_store import iter_hdf5_items


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def boxes_for(n: int, rng) -> np.ndarray:
    xy = rng.uniform(0, 100, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 50, (n, 2))], axis=1).astype(np.float32)


def test_butd_and_lxmert_tsv_rows_import_with_bad_rows_counted(tmp_path):
    rng = np.random.default_rng(0)
    features = {"img1": rng.standard_normal((12, 2048)).astype(np.float32),
                "img2": rng.standard_normal((15, 2048)).astype(np.float32)}
    boxes = {k: boxes_for(len(v), rng) for k, v in features.items()}
    butd = tmp_path / "butd.tsv"
    butd.write_text(
        f"img1\t640\t480\t12\t{b64(boxes['img1'])}\t{b64(features['img1'])}\n"
        "img3\t640\t480\t12\tnot-base64!!\tAAAA\n"
        "only\tthree\tcolumns\n")
    conf = np.linspace(0.9, 0.3, 15).astype(np.float32)
    ids = np.arange(15, dtype=np.int64)
    lxmert = tmp_path / "lxmert.tsv"
    lxmert.write_text("\t".join(["img2", "300", "500", b64(ids), b64(conf), b64(ids + 1), b64(conf / 2), "15",
                                 b64(boxes["img2"]), b64(features["img2"])]) + "\n")
    out = tmp_path / "imported"
    assert main(["import-features", "--source", str(butd), str(lxmert), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["failure_reasons"] == {"malformed_row": 2}
    reader = open_feature_dir(out)
    assert reader.name2nbb == {"img1": 12, "img2": 15}
    one = reader.db["img1"]
    np.testing.assert_array_equal(one["features"], features["img1"].astype(np.float16))
    assert "conf" not in one and "soft_labels" not in one  # BUTD TSVs have neither: nothing is invented
    np.testing.assert_allclose(one["norm_bb"][:, 0].astype(np.float32), boxes["img1"][:, 0] / 640, atol=1e-3)
    two = reader.db["img2"]
    np.testing.assert_array_equal(two["conf"], conf.astype(np.float16))
    assert two["object_ids"].tolist() == list(range(15)) and two["attr_ids"].tolist() == list(range(1, 16))
    np.testing.assert_allclose(two["norm_bb"][:, 3].astype(np.float32), boxes["img2"][:, 3] / 300, atol=1e-3)
    assert reader.meta["img2"] == {"width": 500, "height": 300}


def test_npz_folders_in_uniter_and_butd_layouts(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "npz"
    (folder / "sub").mkdir(parents=True)
    uniter = {"features": rng.standard_normal((10, 64)).astype(np.float16),
              "norm_bb": rng.uniform(0, 1, (10, 6)).astype(np.float16),
              "conf": rng.uniform(0, 1, 10).astype(np.float16),
              "soft_labels": rng.uniform(0, 1, (10, 1601)).astype(np.float16)}
    np.savez(folder / "coco_val2014_000000000042.npz", **uniter)
    butd_boxes = boxes_for(11, rng)
    np.savez(folder / "sub" / "x.npz", x=rng.standard_normal((11, 64)).astype(np.float32), bbox=butd_boxes,
             image_w=np.array(200), image_h=np.array(100), num_bbox=np.array(11),
             info=np.array([{"objects_id": [1]}], dtype=object))  # pickled: never loaded
    np.savez(folder / "odd.npz", something=np.zeros(3))
    out = tmp_path / "imported"
    assert main(["import-features", "--source", str(folder), "--out", str(out)]) == 0
    reader = open_feature_dir(out)
    assert sorted(reader.name2nbb) == ["coco_val2014_000000000042.npz", "sub/x.npz"]
    for key, value in uniter.items():
        np.testing.assert_array_equal(reader.db["coco_val2014_000000000042.npz"][key], value)
    np.testing.assert_allclose(reader.db["sub/x.npz"]["norm_bb"][:, 2].astype(np.float32), butd_boxes[:, 2] / 200,
                               atol=1e-3)
    assert reader.meta["sub/x.npz"] == {"width": 200, "height": 100}
    assert json.loads((out / "summary.json").read_text())["failure_reasons"] == {"unknown_npz_layout": 1}


def test_hdf5_export_import_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(2)
    source = tmp_path / "source"
    with RegionFeatureWriter(source) as writer:
        for i in range(5):
            n = 10 + i
            writer.add(f"dir/img{i}.jpg", {"features": rng.standard_normal((n, 32)),
                                           "norm_bb": rng.uniform(0, 1, (n, 6)),
                                           "conf": rng.uniform(0, 1, n), "soft_labels": rng.uniform(0, 1, (n, 1601)),
                                           "boxes": rng.uniform(0, 99, (n, 4)).astype(np.float32),
                                           "attr_ids": rng.integers(0, 400, n).astype(np.int32)},
                       meta={"width": 100 + i, "height": 50})
    h5 = tmp_path / "features.h5"
    assert main(["export-features", str(source), "--format", "h5", "--output", str(h5)]) == 0
    assert len(list(iter_hdf5_items(h5))) == 5
    out = tmp_path / "back"
    assert main(["import-features", "--source", str(h5), "--out", str(out)]) == 0
    before, after = open_feature_dir(source), open_feature_dir(out)
    assert before.name2nbb == after.name2nbb and before.meta == after.meta
    for name in before.name2nbb:
        a, b = before.db[name], after.db[name]
        assert set(a) == set(b)
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])


def test_export_of_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["export-features", str(tmp_path / "nope"), "--output", str(tmp_path / "x.h5")]) == 2
    assert "feature folder not found" in capsys.readouterr().err
