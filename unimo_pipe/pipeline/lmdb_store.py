"""LMDB with msgpack values (numpy arrays via msgpack-numpy): batched commits, a map that grows.

The reader opens its environment lazily and again in each new process, so one reader object can be
handed to DataLoader workers (fork or spawn) safely. No pickle is ever used on stored data.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import msgpack_numpy
import numpy as np

from unimo_pipe.pipeline.errors import CorruptFileError

logger = logging.getLogger("unimo_pipe")

DEFAULT_INITIAL_MAP_SIZE = 64 << 20


def pack(obj: Any) -> bytes:
    """msgpack bytes in the encoding UNITER reads (msgpack-numpy arrays, bin type on)."""
    return msgpack.packb(obj, default=msgpack_numpy.encode, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, object_hook=msgpack_numpy.decode, raw=False)


def unpack_arrays(data: bytes | memoryview, fields: tuple[str, ...] | None, rows: int | None = None,
                  *, widen: bool = False) -> dict[str, Any]:
    """The named fields (all: None) of a packed {name: array} dict, each cut to its first `rows` rows before it
    is converted, float16 widened to float32 if `widen`; a field not stored is left out.

    Equal to `unpack` then cutting and widening, without building or converting the fields not asked for
    (UNITER's soft labels, N x 1601, are most of a record). Each result owns its memory.
    """
    dump = _array_headers(memoryview(data))
    if dump is None:
        dump = msgpack.unpackb(data, raw=False)  # arrays stay msgpack-numpy headers: nothing decoded yet
    if not isinstance(dump, dict):
        raise ValueError(f"the value is a {type(dump).__name__}, not a dict of arrays")
    names = [name for name in (dump if fields is None else fields) if name in dump]
    if not all(_is_plain_array(dump[name]) for name in names):
        dump = unpack(data)  # scalars, strings, structured arrays: the full decoder, as for any other value
    return {name: _cut(dump[name], rows, widen) for name in names}


# One array as msgpack-numpy packs it (keys nd, type, kind, shape, data, in that order), up to its data's length.
_ARRAY_HEADER = re.compile(rb"\x85\xc4\x02nd\xc3\xc4\x04type(.{1,40}?)\xc4\x04kind\xc4\x00\xc4\x05shape(.{1,60}?)"
                           rb"\xc4\x04data(?:\xc4(.)|\xc5(..)|\xc6(....))", re.DOTALL)


def _array_headers(buffer: memoryview) -> dict[str, dict] | None:
    """{name: msgpack-numpy header, its data a view into `buffer`} of a packed {name: array} map, found
    without copying (or even reading) any array's bytes; None when the value is laid out otherwise."""
    try:
        count, position = _map_length(buffer, 0)
        headers = {}
        for _ in range(count):
            name, position = _short_str(buffer, position)
            match = _ARRAY_HEADER.match(buffer, position)
            if match is None:
                return None
            length = int.from_bytes(next(g for g in match.groups()[2:] if g is not None), "big")
            dtype, shape = msgpack.unpackb(match[1]), msgpack.unpackb(match[2])
            if not isinstance(dtype, str) or not isinstance(shape, list) or match.end() + length > len(buffer):
                return None
            headers[name] = {b"nd": True, b"type": dtype, b"kind": b"", b"shape": shape,
                             b"data": buffer[match.end() : match.end() + length]}
            position = match.end() + length
    except (IndexError, ValueError, msgpack.UnpackException):
        return None
    return headers if position == len(buffer) else None


def _map_length(buffer: memoryview, position: int) -> tuple[int, int]:
    first = buffer[position]
    if 0x80 <= first <= 0x8f:
        return first & 0x0f, position + 1
    if first == 0xde:
        return int.from_bytes(buffer[position + 1 : position + 3], "big"), position + 3
    raise ValueError("not a small map")


def _short_str(buffer: memoryview, position: int) -> tuple[str, int]:
    first = buffer[position]
    if 0xa0 <= first <= 0xbf:
        start, length = position + 1, first & 0x1f
    elif first == 0xd9:
        start, length = position + 2, buffer[position + 1]
    else:
        raise ValueError("not a short string")
    return bytes(buffer[start : start + length]).decode("utf-8"), start + length


def _is_plain_array(value: Any) -> bool:
    return isinstance(value, dict) and value.get(b"nd") is True and value.get(b"kind", b"") == b""


def _cut(value: Any, rows: int | None, widen: bool) -> Any:
    """An array (a msgpack-numpy header or decoded) cut to its first `rows` rows, then widened or copied."""
    if isinstance(value, dict):
        value = _header_view(value, rows)
    elif not isinstance(value, np.ndarray):
        return value  # a scalar or a string
    elif rows is not None and value.ndim:
        value = value[:rows]
    return widen_float16(value) if widen and value.dtype == np.float16 else value.copy()


def _header_view(header: dict, rows: int | None) -> np.ndarray:
    """The first `rows` rows of a msgpack-numpy array, a view of its bytes."""
    try:
        dtype, shape, data = np.dtype(header[b"type"]), tuple(int(n) for n in header[b"shape"]), header[b"data"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"an array header lacks or mangles {exc}") from None
    if rows is not None and shape:
        shape = (min(rows, shape[0]), *shape[1:])
    return np.frombuffer(data, dtype=dtype, count=math.prod(shape)).reshape(shape)


def widen_float16(array: np.ndarray) -> np.ndarray:
    """float16 -> float32, exactly as numpy's astype, through torch's vectorised conversion (numpy's is
    several times slower on x86)."""
    import torch

    return torch.from_numpy(np.array(array, copy=True)).float().numpy()


def _key(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def _as_os_error(exc: lmdb.Error, path: Path) -> Exception:
    """A full or failing disk under a store is an OSError naming the store, as any other write's would be."""
    if isinstance(exc, lmdb.DiskError):
        return OSError(errno.ENOSPC, str(exc), str(path))
    if os.strerror(errno.EIO) in str(exc):
        return OSError(errno.EIO, str(exc), str(path))
    return exc


class LmdbWriter:
    """Buffered writer: puts are committed every `commit_every` records in one transaction.

    When the map is full the transaction is retried after doubling the map size, so the initial
    size can be small and the file grows with the data.
    """

    def __init__(self, path: Path, *, initial_map_size: int = DEFAULT_INITIAL_MAP_SIZE, commit_every: int = 256):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.commit_every = commit_every
        self._env = lmdb.open(str(path), map_size=initial_map_size, subdir=True, meminit=False)
        self._pending: list[tuple[bytes, bytes]] = []
        self.written = 0

    def put(self, key: str | bytes, value: Any) -> None:
        self.put_raw(key, pack(value))

    def put_raw(self, key: str | bytes, value: bytes) -> None:
        self._pending.append((_key(key), value))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._pending:
                        txn.put(key, value)
            except lmdb.MapFullError:
                self._grow()
                continue
            except lmdb.Error as exc:
                raise _as_os_error(exc, self.path) from exc
            self.written += len(self._pending)
            self._pending.clear()

    def _grow(self) -> None:
        new_size = self._env.info()["map_size"] * 2
        logger.debug("LMDB %s: map full, growing to %d bytes", self.path, new_size)
        self._env.set_mapsize(new_size)

    def close(self) -> None:
        if self._env is None:
            return
        self.commit()
        self._env.sync()
        self._env.close()
        self._env = None

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pending.clear()
            self._env.close()
            self._env = None


_SHARED_ENVIRONMENTS: dict[tuple[str, int], lmdb.Environment] = {}


def _shared_environment(path: Path) -> lmdb.Environment:
    """One read-only environment per path and process: lmdb refuses to open a path twice in a process.

    A forked process inherits its parent's open environments, and py-lmdb counts them as open here too,
    whichever reader opened them: they are closed (read-only, no lock: the parent's stay valid) before
    this process opens its own."""
    resolved, pid = str(path.resolve()), os.getpid()
    if (resolved, pid) not in _SHARED_ENVIRONMENTS:
        for inherited in [key for key in _SHARED_ENVIRONMENTS if key[0] == resolved and key[1] != pid]:
            _SHARED_ENVIRONMENTS.pop(inherited).close()
        _SHARED_ENVIRONMENTS[resolved, pid] = lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                                                        meminit=False)
    return _SHARED_ENVIRONMENTS[resolved, pid]


class LmdbReader:
    """Read-only access by key; safe to share with forked or spawned DataLoader workers."""

    def __init__(self, path: Path):
        if not (path / "data.mdb").is_file():
            raise FileNotFoundError(f"no LMDB store at {path} (expected {path / 'data.mdb'})")
        self.path = path
        self._env = None
        self._pid = None

    def _txn(self) -> lmdb.Transaction:
        if self._env is None or self._pid != os.getpid():
            if self._env is not None:
                # Inherited through fork: the parent's handle must not be used here; drop it (read-only,
                # no lock: safe) along with the parent's entry in the shared table.
                self._env.close()
                _SHARED_ENVIRONMENTS.pop((str(self.path.resolve()), self._pid), None)
            with self._damaged_store_is_one_error():
                self._env = _shared_environment(self.path)
                self._txn_cache = self._env.begin(buffers=True)
            self._pid = os.getpid()
        return self._txn_cache

    @contextlib.contextmanager
    def _damaged_store_is_one_error(self, key: str | bytes | None = None) -> Iterator[None]:
        try:
            yield
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.VersionMismatchError,
                ValueError, msgpack.UnpackException) as exc:
            what = f"its value for {_key(key).decode('utf-8', 'replace')!r}" if key is not None else "it"
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise CorruptFileError(f"LMDB store {self.path} is damaged ({detail}; reading {what}): rerun the "
                                   "stage that wrote it with --overwrite, or restore it") from None

    def get_raw(self, key: str | bytes) -> memoryview | None:
        txn = self._txn()
        with self._damaged_store_is_one_error(key):
            return txn.get(_key(key))

    def get(self, key: str | bytes, default: Any = None) -> Any:
        data = self.get_raw(key)
        return default if data is None else self._unpack(key, data)

    def __getitem__(self, key: str | bytes) -> Any:
        data = self.get_raw(key)
        if data is None:
            raise KeyError(key)
        return self._unpack(key, data)

    def _unpack(self, key: str | bytes, data: memoryview) -> Any:
        with self._damaged_store_is_one_error(key):
            return unpack(data)

    def get_arrays(self, key: str | bytes, fields: tuple[str, ...] | None, rows: int | None = None,
                   *, widen: bool = False) -> dict[str, Any]:
        """`unpack_arrays` of the value under `key` (KeyError if there is none)."""
        data = self.get_raw(key)
        if data is None:
            raise KeyError(key)
        with self._damaged_store_is_one_error(key):
            return unpack_arrays(data, fields, rows, widen=widen)

    def __contains__(self, key: str | bytes) -> bool:
        return self.get_raw(key) is not None

    def __len__(self) -> int:
        return self._txn().stat()["entries"]

    def keys(self) -> Iterator[str]:
        for key in self._txn().cursor().iternext(keys=True, values=False):
            yield bytes(key).decode("utf-8")

    def items_raw(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._txn().cursor():
            yield bytes(key), bytes(value)

    def close(self) -> None:
        """Closes the process's shared environment for this path (other readers of it reopen on use)."""
        if self._env is not None and self._pid == os.getpid():
            _SHARED_ENVIRONMENTS.pop((str(self.path.resolve()), self._pid), None)
            self._env.close()
        self._env = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._env = None
        self._pid = None
