"""Deterministic shards and which of them this process owns (--shard I/N, torchrun, SLURM arrays)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from unimo_pipe.pipeline.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class ShardSelection:
    """This process handles shards whose index is `index` modulo `count`."""

    index: int = 0
    count: int = 1

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard_selection(text: str) -> ShardSelection:
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {text!r} is not I/N with 0 <= I < N: e.g. --shard 0/4 for the first of 4")
    return ShardSelection(index, count)


def selection_from_env(env: Mapping[str, str]) -> ShardSelection | None:
    """torchrun's RANK/WORLD_SIZE, else a SLURM job array's task id and count."""
    if "WORLD_SIZE" in env and "RANK" in env:
        return parse_shard_selection(f"{env['RANK']}/{env['WORLD_SIZE']}")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        task = int(env["SLURM_ARRAY_TASK_ID"]) - first
        return parse_shard_selection(f"{task}/{env['SLURM_ARRAY_TASK_COUNT']}")
    return None


def resolve_selection(explicit: str | None, env: Mapping[str, str] | None = None) -> ShardSelection:
    """An explicit --shard wins; then the scheduler's environment; else all shards."""
    if explicit:
        return parse_shard_selection(explicit)
    return selection_from_env(os.environ if env is None else env) or ShardSelection()


def chunk(items: Iterable[T], size: int) -> Iterator[tuple[int, list[T]]]:
    """Consecutive chunks of `size` items, numbered from 0; the last may be shorter."""
    iterator = iter(items)
    index = 0
    while batch := list(islice(iterator, size)):
        yield index, batch
        index += 1


def shard_name(index: int) -> str:
    return f"{index:05d}"
