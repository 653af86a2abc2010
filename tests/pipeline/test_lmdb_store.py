from __future__ import annotations

import multiprocessing
import pickle

import lmdb
import msgpack
import numpy as np
import pytest

from unimo_pipe.pipeline.errors import CorruptFileError
from unimo_pipe.pipeline.lmdb_store import (
    LmdbReader,
    LmdbWriter,
    _array_headers,
    pack,
    unpack,
    unpack_arrays,
    widen_float16,
)


def test_values_round_trip_with_numpy_arrays(tmp_path):
    value = {"features": np.arange(12, dtype=np.float16).reshape(3, 4), "ids": np.array([1, 2, 3]),
             "name": "x", "n": 3}
    with LmdbWriter(tmp_path / "db") as writer:
        writer.put("a", value)
    back = LmdbReader(tmp_path / "db")["a"]
    assert back["features"].dtype == np.float16 and back["features"].shape == (3, 4)
    np.testing.assert_array_equal(back["features"], value["features"])
    np.testing.assert_array_equal(back["ids"], value["ids"])
    assert back["name"] == "x" and back["n"] == 3


def test_map_grows_past_a_tiny_initial_size(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"img{i}": rng.standard_normal((100, 256)).astype(np.float32) for i in range(40)}
    writer = LmdbWriter(tmp_path / "db", initial_map_size=64 * 1024, commit_every=8)
    for key, array in arrays.items():
        writer.put(key, array)
    writer.close()
    assert writer.written == 40
    reader = LmdbReader(tmp_path / "db")
    assert len(reader) == 40
    assert (tmp_path / "db" / "data.mdb").stat().st_size > 40 * 100 * 256 * 4
    for key, array in arrays.items():
        np.testing.assert_array_equal(reader[key], array)


def test_without_growth_the_tiny_map_would_overflow(tmp_path):
    env = lmdb.open(str(tmp_path / "raw"), map_size=64 * 1024)
    with pytest.raises(lmdb.MapFullError):
        with env.begin(write=True) as txn:
            for i in range(40):
                txn.put(f"{i}".encode(), pack(np.zeros((100, 256), np.float32)))


def test_reader_missing_key_and_missing_store(tmp_path):
    with LmdbWriter(tmp_path / "db") as writer:
        writer.put("a", 1)
    reader = LmdbReader(tmp_path / "db")
    assert "a" in reader and "b" not in reader and reader.get("b", 5) == 5
    with pytest.raises(KeyError):
        reader["b"]
    assert list(reader.keys()) == ["a"]
    with pytest.raises(FileNotFoundError, match="no LMDB store"):
        LmdbReader(tmp_path / "nothing")


def test_aborted_writer_keeps_only_committed_batches(tmp_path):
    with pytest.raises(RuntimeError):
        with LmdbWriter(tmp_path / "db", commit_every=2) as writer:
            for i in range(5):
                writer.put(str(i), i)
            raise RuntimeError("killed")
    assert sorted(LmdbReader(tmp_path / "db").keys()) == ["0", "1", "2", "3"]


def _read_in_child(reader: LmdbReader, key: str, queue) -> None:
    queue.put(int(reader[key]))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_is_safe_in_worker_processes(tmp_path, method):
    with LmdbWriter(tmp_path / "db") as writer:
        writer.put("k", 42)
    reader = LmdbReader(tmp_path / "db")
    assert reader["k"] == 42  # opened in the parent first
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(reader, "k", queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 42
    assert "_env" not in pickle.loads(pickle.dumps(reader)).__dict__ or pickle.loads(pickle.dumps(reader))._env is None


def test_a_fresh_reader_works_in_a_forked_child_when_another_reader_opened_the_store(tmp_path):
    """The parent's open environment is inherited through fork (py-lmdb then refuses a new open of the
    same files) even when the reader the child uses never opened it itself."""
    with LmdbWriter(tmp_path / "db") as writer:
        writer.put("k", 7)
    assert LmdbReader(tmp_path / "db")["k"] == 7  # another reader of the same store, in the parent
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(LmdbReader(tmp_path / "db"), "k", queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 7


def test_pack_is_msgpack_not_pickle():
    data = pack({"a": np.ones(2, np.float16)})
    assert b"numpy" not in data and data[:1] != b"\x80"
    assert unpack(data)["a"].tolist() == [1.0, 1.0]


def arrays_value(rng: np.random.Generator) -> dict:
    return {"features": rng.standard_normal((9, 5)).astype(np.float16), "boxes": rng.random((9, 4)),
            "labels": rng.integers(0, 50, 9).astype(np.int32), "conf": rng.random(9).astype(np.float16),
            "scale": np.array(2.5, dtype=np.float16), "empty": np.zeros((0, 3), np.float16)}


def mixed_value(rng: np.random.Generator) -> dict:
    return {"features": rng.standard_normal((9, 5)).astype(np.float16), "boxes": rng.random((9, 4)),
            "labels": rng.integers(0, 50, 9).astype(np.int32), "conf": rng.random(9).astype(np.float16),
            "count": np.int64(9), "scale": np.array(2.5, dtype=np.float16), "name": "x.jpg"}


@pytest.mark.parametrize("fields", [None, ("features",), ("conf", "boxes", "absent"), ("count", "name", "scale")])
@pytest.mark.parametrize("rows", [None, 4, 20])
@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("make, direct", [(arrays_value, True), (mixed_value, False)])
def test_unpack_arrays_equals_unpacking_everything_then_cutting(fields, rows, widen, make, direct):
    value = make(np.random.default_rng(1))
    # only arrays: located in place, never copied; scalars or strings too: the full decoder
    assert (_array_headers(memoryview(pack(value))) is not None) == direct
    full = unpack(pack(value))
    expected = {}
    for name in full if fields is None else fields:
        if name in full:
            item = full[name]
            if isinstance(item, np.ndarray) and item.ndim and rows is not None:
                item = item[:rows]
            if widen and isinstance(item, np.ndarray) and item.dtype == np.float16:
                item = item.astype(np.float32)
            expected[name] = item
    got = unpack_arrays(pack(value), fields, rows, widen=widen)
    assert list(got) == list(expected)
    for name, item in expected.items():
        assert type(got[name]) is type(item) and getattr(got[name], "dtype", None) == getattr(item, "dtype", None)
        np.testing.assert_array_equal(got[name], item)
        if isinstance(item, np.ndarray) and item.ndim:
            assert got[name].flags.writeable  # a copy: the LMDB buffer it came from may go


def test_unpack_arrays_never_decodes_a_field_not_asked_for():
    value = {"features": np.ones((3, 4), np.float16), "soft_labels": np.ones((3, 7), np.float16)}
    raw = msgpack.unpackb(pack(value), raw=False)
    raw["soft_labels"][b"data"] = raw["soft_labels"][b"data"][:5]  # too short for its shape
    damaged = msgpack.packb(raw, use_bin_type=True)
    with pytest.raises((TypeError, ValueError)):
        unpack(damaged)
    np.testing.assert_array_equal(unpack_arrays(damaged, ("features",), 2)["features"], np.ones((2, 4), np.float16))
    with pytest.raises(ValueError):
        unpack_arrays(damaged, ("soft_labels",))


def test_widening_float16_is_exact_including_extremes():
    special = np.array([0.0, -0.0, 6.1e-5, 5.96e-8, 65504.0, -65504.0, np.inf, -np.inf, np.nan], np.float16)
    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    for array in (special, every.reshape(256, 256)):
        np.testing.assert_array_equal(widen_float16(array), array.astype(np.float32))
        assert widen_float16(array).dtype == np.float32


def test_a_damaged_value_read_by_field_is_one_error(tmp_path):
    value = {"features": np.ones((3, 4), np.float16)}
    raw = msgpack.unpackb(pack(value), raw=False)
    raw["features"][b"data"] = b"\x00"
    with LmdbWriter(tmp_path / "db") as writer:
        writer.put_raw("a", msgpack.packb(raw, use_bin_type=True))
    with pytest.raises(CorruptFileError, match="damaged.*'a'"):
        LmdbReader(tmp_path / "db").get_arrays("a", ("features",))
    with pytest.raises(KeyError):
        LmdbReader(tmp_path / "db").get_arrays("missing", ("features",))
