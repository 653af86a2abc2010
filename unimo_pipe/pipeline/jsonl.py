"""Atomic file writes and JSONL reading that reports bad lines instead of dying on them."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from unimo_pipe.pipeline.errors import CorruptFileError


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write names no file: say which one (the disk is full where?)
        raise


def json_text(obj: Any) -> str:
    """The text every JSON file of the pipeline is written as."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write(json_text(obj))


def write_text_if_changed(path: Path, text: str) -> None:
    """Write `text` atomically unless the file already holds it (a finished rerun on a read-only mount)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text(encoding="utf-8") == text:
            return
    with atomic_write(path) as f:
        f.write(text)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as JSON lines; returns the number written."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a damaged file is a CorruptFileError naming it."""
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}): the file is damaged: restore it, or delete it "
                               "and rerun the stage that wrote it") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, object, None) per good line and (line number, None, problem) per bad one.

    Blank lines are ignored; invalid UTF-8 and invalid JSON are reported, not raised.
    """
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig")  # -sig: a byte order mark is accepted
            except UnicodeDecodeError:
                yield line_number, None, "invalid_utf8"
                continue
            try:
                yield line_number, json.loads(text), None
            except json.JSONDecodeError:
                yield line_number, None, "malformed_json"
