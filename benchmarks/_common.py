"""Helpers shared by the benchmark scripts: timing and the one JSON line each script prints."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_call(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def report(name: str, **fields: object) -> None:
    line = {"benchmark": name, "cpu_cores": os.cpu_count(), "python": platform.python_version(), **fields}
    print(json.dumps(line))
