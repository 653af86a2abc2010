from __future__ import annotations

import pytest

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.sharding import (
    ShardSelection,
    chunk,
    parse_shard_selection,
    resolve_selection,
    selection_from_env,
)


def test_chunks_are_deterministic_and_cover_everything():
    items = list(range(23))
    first = list(chunk(items, 5))
    assert first == list(chunk(iter(items), 5))
    assert [i for i, _ in first] == [0, 1, 2, 3, 4]
    assert [x for _, part in first for x in part] == items
    assert len(first[-1][1]) == 3
    assert list(chunk([], 5)) == []


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_selections_partition_shards(workers):
    owned = [[s for s in range(10) if ShardSelection(w, workers).owns(s)] for w in range(workers)]
    flat = sorted(s for part in owned for s in part)
    assert flat == list(range(10))


@pytest.mark.parametrize("text", ["2/2", "x/3", "1", "-1/3", "0/0"])
def test_bad_shard_selection_is_a_user_error(text):
    with pytest.raises(UserError, match="is not I/N"):
        parse_shard_selection(text)


def test_environment_selection():
    assert selection_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == ShardSelection(1, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert selection_from_env(slurm) == ShardSelection(2, 4)
    assert selection_from_env({}) is None


def test_explicit_selection_wins_over_environment():
    env = {"RANK": "1", "WORLD_SIZE": "4"}
    assert resolve_selection("0/2", env) == ShardSelection(0, 2)
    assert resolve_selection(None, env) == ShardSelection(1, 4)
    assert resolve_selection(None, {}) == ShardSelection(0, 1)
