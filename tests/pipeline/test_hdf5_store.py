from __future__ import annotations

import numpy as np

from unimo_pipe.pipeline.hdf5_store import Hdf5Writer, iter_hdf5_items


def test_round_trip_keeps_names_arrays_and_attributes(tmp_path):
    items = {"dir/a.jpg": {"features": np.arange(6, dtype=np.float16).reshape(2, 3)},
             "b%c.jpg": {"features": np.ones((1, 3), np.float16), "boxes": np.zeros((1, 4), np.float32)}}
    with Hdf5Writer(tmp_path / "f.h5") as writer:
        for name, arrays in items.items():
            writer.add(name, arrays, attrs={"width": 64})
    back = {name: (arrays, attrs) for name, arrays, attrs in iter_hdf5_items(tmp_path / "f.h5")}
    assert set(back) == set(items)
    for name, arrays in items.items():
        for key, array in arrays.items():
            assert back[name][0][key].dtype == array.dtype
            np.testing.assert_array_equal(back[name][0][key], array)
        assert back[name][1]["width"] == 64
