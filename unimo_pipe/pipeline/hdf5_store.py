"""HDF5 helpers: one group per item, one dataset per array, plus scalar attributes (h5py, lazily)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import CorruptFileError


def _escape(name: str) -> str:
    # '/' separates HDF5 groups; keep nested image paths as one flat group name.
    return name.replace("%", "%25").replace("/", "%2F")


def _unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


class Hdf5Writer:
    def __init__(self, path: Path):
        import h5py

        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(path, "w")

    def add(self, name: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any] | None = None) -> None:
        group = self._file.create_group(_escape(name))
        for key, array in arrays.items():
            group.create_dataset(key, data=np.asarray(array))
        for key, value in (attrs or {}).items():
            group.attrs[key] = value

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Hdf5Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_hdf5_items(path: Path, *, arrays: bool = True) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """(name, arrays, attributes) for every group of a file written by Hdf5Writer (arrays={} if not wanted)."""
    with _open_for_reading(path) as f:
        for escaped, group in f.items():
            values = {key: dataset[()] for key, dataset in group.items()} if arrays else {}
            yield _unescape(escaped), values, dict(group.attrs)


def read_hdf5_item(path: Path, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and attributes of one item."""
    with _open_for_reading(path) as f:
        group = f[_escape(name)]
        return {key: dataset[()] for key, dataset in group.items()}, dict(group.attrs)


def _open_for_reading(path: Path):
    """An open h5py.File; a file that is not HDF5 (or is truncated) is a CorruptFileError naming it."""
    import h5py

    try:
        return h5py.File(path, "r")
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the CLI names the path
    except OSError as exc:  # h5py's "file signature not found", "truncated file", ...
        raise CorruptFileError(f"{path} is not a readable HDF5 file ({exc}): check it is complete and really "
                               "HDF5 (.h5), or pass --format") from None
