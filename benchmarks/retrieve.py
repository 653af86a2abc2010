"""Retrieval search speed and quality: numpy brute force vs FAISS exact vs our index choices.

Synthetic clustered unit vectors (like sentence embeddings); recall@10 is measured against the exact
top-10 of the same queries. Prints one JSON line; asserts FAISS exact beats numpy and matches it.
On a GPU machine the torch exact index is measured too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed_call  # noqa: E402

from unimo_pipe.models.vector_index import build_index, choose_kind, exact_search  # noqa: E402


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def numpy_top10(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return exact_search(base, queries, 10)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def run(size: int, dim: int, queries_n: int) -> None:
    base = clustered(size, dim, 0)
    queries = clustered(queries_n, dim, 1)
    results: dict[str, object] = {"vectors": size, "dim": dim, "queries": queries_n}
    seconds, truth = timed_call(numpy_top10, base, queries)
    results["numpy_queries_per_s"] = round(queries_n / seconds)
    auto_kind = choose_kind("auto", size=size, dim=dim, memory_budget_bytes=8 * 2**30, device="cpu")
    tight_kind = choose_kind("auto", size=size, dim=dim, memory_budget_bytes=size * dim, device="cpu")
    kinds = {"faiss_flat": "flat", f"auto_{auto_kind}": auto_kind, f"auto_tight_budget_{tight_kind}": tight_kind,
             "hnsw": "hnsw"}
    try:
        import torch

        if torch.cuda.is_available():
            kinds["torch_exact_gpu"] = "torch"
    except ImportError:
        pass
    for label, kind in kinds.items():
        build_s, index = timed_call(build_index, kind, base, device="cuda" if kind == "torch" else "cpu")
        search_s, (_, rows) = timed_call(index.search, queries, 10)
        results[f"{label}_build_s"] = round(build_s, 2)
        results[f"{label}_queries_per_s"] = round(queries_n / search_s)
        results[f"{label}_recall_at_10"] = round(recall(rows, truth), 4)
    results["faiss_flat_vs_numpy"] = round(results["faiss_flat_queries_per_s"] / results["numpy_queries_per_s"], 2)
    results[f"auto_tight_budget_{tight_kind}_vs_numpy"] = round(
        results[f"auto_tight_budget_{tight_kind}_queries_per_s"] / results["numpy_queries_per_s"], 2)
    report("retrieve_search", **results)
    assert results["faiss_flat_recall_at_10"] >= 0.99


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    run(args.vectors, args.dim, args.queries)
