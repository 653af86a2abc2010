from __future__ import annotations

import numpy as np
import pytest

from unimo_pipe.models.embedders import ImageVectors, load_embedding_file, normalize_rows, pool_regions
from unimo_pipe.pipeline.errors import RecordError, UserError

IDS = ["a.jpg", "dir/b.jpg", "c.jpg"]
VECTORS = np.arange(12, dtype=np.float32).reshape(3, 4)


def write_all_formats(tmp_path):
    import h5py
    import pyarrow as pa
    import pyarrow.parquet as pq

    np.save(tmp_path / "e.npy", VECTORS)
    (tmp_path / "e.ids.txt").write_text("\n".join(IDS) + "\n")
    np.savez(tmp_path / "e.npz", ids=np.array(IDS), embeddings=VECTORS)
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["ids"] = np.array(IDS, dtype="S")
        f["embeddings"] = VECTORS
    pq.write_table(pa.table({"id": IDS, "embedding": VECTORS.tolist()}), tmp_path / "e.parquet")
    return [tmp_path / name for name in ("e.npy", "e.npz", "e.h5", "e.parquet")]


def test_every_embedding_file_format_loads_the_same(tmp_path):
    for path in write_all_formats(tmp_path):
        ids, vectors = load_embedding_file(path)
        assert ids == IDS, path
        np.testing.assert_array_equal(vectors, VECTORS)


def test_embedding_file_problems_are_user_errors(tmp_path):
    np.save(tmp_path / "x.npy", VECTORS)
    with pytest.raises(UserError, match="x.ids.txt not found"):
        load_embedding_file(tmp_path / "x.npy")
    (tmp_path / "x.ids.txt").write_text("only-one\n")
    with pytest.raises(UserError, match="1 ids for an array of shape"):
        load_embedding_file(tmp_path / "x.npy")
    np.savez(tmp_path / "y.npz", vectors=VECTORS)
    with pytest.raises(UserError, match="needs arrays named 'ids' and 'embeddings'"):
        load_embedding_file(tmp_path / "y.npz")
    with pytest.raises(UserError, match="unknown embedding file type"):
        load_embedding_file(tmp_path / "z.csv")


def test_image_vectors_find_keys_by_file_name(tmp_path):
    images = ImageVectors(write_all_formats(tmp_path)[1])
    assert images.resolve("dir/b.jpg") == "dir/b.jpg"
    assert images.resolve("val2014/b.jpg") == "dir/b.jpg"
    with pytest.raises(RecordError, match="nope.jpg is not in"):
        images.resolve("nope.jpg")
    np.testing.assert_array_equal(images.vector("c.jpg"), VECTORS[2])
    assert images.dim == 4


def test_normalize_rows_flags_unusable_vectors():
    vectors = np.array([[3, 4], [0, 0], [np.nan, 1], [np.inf, 0]], dtype=np.float32)
    normalised, usable = normalize_rows(vectors)
    assert usable.tolist() == [True, False, False, False]
    np.testing.assert_allclose(normalised[0], [0.6, 0.8])


def test_pooling_mean_and_confidence_weighted():
    features = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool_regions(features), [0.5, 0.5])
    np.testing.assert_allclose(pool_regions(features, np.array([3.0, 1.0]), "conf_weighted"), [0.75, 0.25])
