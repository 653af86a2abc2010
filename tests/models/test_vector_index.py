from __future__ import annotations

import numpy as np
import pytest

from unimo_pipe.models.vector_index import (
    build_index,
    choose_kind,
    exact_search,
    measure_recall,
    pq_sub_quantizers,
    sq_bits,
)


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "torch", "hnsw", "ivf", "ivfpq"])
def test_every_index_finds_planted_neighbours(kind):
    base = clustered(3000, 32, 50)
    rng = np.random.default_rng(1)
    queries = base[:20] + 0.01 * rng.standard_normal((20, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = build_index(kind, base)
    scores, rows = index.search(queries, 5)
    assert rows.shape == (20, 5) and scores.shape == (20, 5)
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # sorted best first
    found = np.mean([q in r for q, r in enumerate(rows)])
    assert found >= (1.0 if index.exact else 0.8)


def test_exact_kinds_agree_with_brute_force():
    base = clustered(500, 16, 10)
    queries = clustered(30, 16, 10, seed=3)
    truth = exact_search(base, queries, 10)
    for kind in ("flat", "torch"):
        _, rows = build_index(kind, base).search(queries, 10)
        np.testing.assert_array_equal(rows, truth)


def test_recall_is_one_for_exact_and_measured_below_one_for_pq():
    base = clustered(4000, 64, 40)
    queries = base[:300]
    assert measure_recall(build_index("flat", base), base, queries, 10) == 1.0
    recall = measure_recall(build_index("ivfpq", base), base, queries, 10)
    assert 0.2 < recall < 1.0


def test_k_larger_than_collection_pads_with_minus_one():
    base = clustered(4, 8, 2)
    for kind in ("flat", "torch"):
        _, rows = build_index(kind, base).search(base[:2], 6)
        assert (rows[:, 4:] == -1).all() and (rows[:, :4] >= 0).all()


def test_auto_is_exact_when_it_fits_the_budget():
    assert choose_kind("auto", size=1000, dim=128, memory_budget_bytes=1e9, device="cpu") == "flat"
    assert choose_kind("auto", size=10**8, dim=768, memory_budget_bytes=8 * 2**30, device="cpu") == "ivfpq"
    assert choose_kind("hnsw", size=10, dim=8, memory_budget_bytes=0, device="cpu") == "hnsw"


def test_compressed_codes_are_the_largest_that_fit_the_budget():
    n, dim = 10_000, 64
    lists_bytes = 4 * 256 * 64  # 4 sqrt(n) lists of dim floats
    assert sq_bits(n, dim, n * (64 + 8) + lists_bytes) == 8
    assert sq_bits(n, dim, n * (64 + 8) + lists_bytes - 1) == 6
    assert sq_bits(n, dim, n * (32 + 8) + lists_bytes) == 4
    assert sq_bits(n, dim, n * 39) is None
    assert pq_sub_quantizers(n, dim, None) == 16  # dim / 4
    assert pq_sub_quantizers(n, dim, n * (8 + 8) + lists_bytes) == 8
    assert choose_kind("auto", size=n, dim=dim, memory_budget_bytes=n * dim * 2, device="cpu") == "ivfsq"
    assert choose_kind("auto", size=n, dim=dim, memory_budget_bytes=n * 30, device="cpu") == "ivfpq"
    index = build_index("ivfsq", clustered(n, dim, 20), memory_budget_bytes=n * (48 + 8) + lists_bytes)
    assert index.encoding()["codes"] == "SQ6" and index.encoding()["memory_bytes"] <= n * (48 + 8) + lists_bytes
