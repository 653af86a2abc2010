"""Retrieval search speed and quality: numpy brute force, FAISS exact and our index choices, tuned to a recall
target, against autofaiss on the same vectors in the same run.

Synthetic clustered unit vectors (like sentence embeddings), one thread everywhere. Approximate indexes
are tuned (`tune_search`, as `retrieve --target-recall` does) on a held-out sample of queries drawn like
the measured ones, then recall@10 is measured on the measured queries against their exact top-10.
Indexes: `auto` with ample memory (exact), `auto` within a budget of one byte per dimension (the issue's
76.8 MB at 200k x 384), and `hnsw`.

The peer, autofaiss (its own index choice and search tuning), needs numpy < 2, so it runs in its own
Python (`--peer-python`, or $UNIMO_AUTOFAISS_PYTHON; e.g. `python3 -m venv /tmp/peers && /tmp/peers/bin/pip
install autofaiss faiss-cpu==1.7.4 'pyarrow<18'`) through benchmarks/peers/autofaiss_peer.py, with ample
memory and, with `--peer-tight`, within the same tight budget (its OPQ training takes minutes). Without a
peer the JSON line says so. The issue's size: `--vectors 200000` (minutes; the default stays near two).

Prints one JSON line. Asserts only what load cannot flip (recall is deterministic, one thread, fixed seeds):
FAISS exact matches numpy, and tuned HNSW reaches the target on the measured queries (within sampling noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed_call  # noqa: E402

from unimo_pipe.models.vector_index import (  # noqa: E402
    build_index,
    choose_kind,
    exact_search,
    recall_against,
    tune_search,
)

PEER_SCRIPT = Path(__file__).parent / "peers" / "autofaiss_peer.py"
AMPLE_BYTES = 8 * 2**30


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def measure_ours(label: str, kind: str, base, queries, tuning_queries, truth, budget: float, target: float) -> dict:
    build_s, index = timed_call(build_index, kind, base, memory_budget_bytes=budget)
    tune_s, tuning = timed_call(tune_search, index, base, tuning_queries, k=10, target=target)
    search_s, (_, rows) = timed_call(index.search, queries, 10)
    result = {f"{label}_build_s": round(build_s, 2), f"{label}_queries_per_s": round(len(queries) / search_s),
              f"{label}_recall_at_10": round(recall_against(truth, rows), 4)}
    if tuning is not None:
        result[f"{label}_tune_s"] = round(tune_s, 2)
        result[f"{label}_build_and_tune_s"] = round(build_s + tune_s, 2)
        result[f"{label}_search_params"] = {tuning.knob: tuning.value}
        result[f"{label}_tuning_recall"] = round(tuning.recall, 4)
        result[f"{label}_target_met"] = tuning.target_met
    if "codes" in index.encoding():
        result[f"{label}_codes"] = index.encoding()["codes"]
    return result


def measure_peer(label: str, python: str, folder: Path, budget: float, queries_n: int, truth) -> dict:
    prefix = folder / label
    done = subprocess.run([python, str(PEER_SCRIPT), str(folder / "base.npy"), str(folder / "queries.npy"),
                           str(prefix), "--budget-bytes", str(int(budget))], capture_output=True, text=True)
    if done.returncode != 0:
        return {f"{label}_error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    line = json.loads(done.stdout.strip().splitlines()[-1])
    rows = np.load(f"{prefix}.rows.npy")
    return {f"{label}_index": line["index_key"], f"{label}_search_params": line["index_param"],
            f"{label}_build_s": round(line["build_s"], 2),
            f"{label}_queries_per_s": round(queries_n / line["search_s"]),
            f"{label}_recall_at_10": round(recall_against(truth, rows), 4)}


def ratio(results: dict, ours: str, theirs: str, field: str, *, inverse: bool = False) -> float | None:
    a, b = results.get(f"{ours}_{field}"), results.get(f"{theirs}_{field}")
    if not a or not b:
        return None
    return round(b / a if inverse else a / b, 2)


def run(args) -> None:
    faiss.omp_set_num_threads(1)
    size, dim = args.vectors, args.dim
    base, queries, tuning_queries = clustered(size, dim, 0), clustered(args.queries, dim, 1), clustered(
        args.tune_queries, dim, 2)
    tight = float(size * dim)  # one byte a dimension: a quarter of the exact index
    results: dict[str, object] = {"vectors": size, "dim": dim, "queries": args.queries,
                                  "tune_queries": args.tune_queries, "target_recall": args.target_recall,
                                  "tight_budget_bytes": int(tight), "threads": 1}
    numpy_s, truth = timed_call(exact_search, base, queries, 10)
    results["numpy_queries_per_s"] = round(args.queries / numpy_s)
    kinds = {"faiss_flat": ("flat", AMPLE_BYTES),
             "ours_auto": (choose_kind("auto", size=size, dim=dim, memory_budget_bytes=AMPLE_BYTES, device="cpu"),
                           AMPLE_BYTES),
             "ours_auto_tight": (choose_kind("auto", size=size, dim=dim, memory_budget_bytes=tight, device="cpu"),
                                 tight),
             "ours_hnsw": ("hnsw", AMPLE_BYTES)}
    for label, (kind, budget) in kinds.items():
        results[f"{label}_kind"] = kind
        results.update(measure_ours(label, kind, base, queries, tuning_queries, truth, budget, args.target_recall))
    results["faiss_flat_vs_numpy"] = round(results["faiss_flat_queries_per_s"] / results["numpy_queries_per_s"], 2)
    peer = args.peer_python or os.environ.get("UNIMO_AUTOFAISS_PYTHON")
    results["peer"] = "autofaiss" if peer else "not run: pass --peer-python (a Python with autofaiss)"
    if peer:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "base.npy", base)
            np.save(Path(tmp) / "queries.npy", queries)
            results.update(measure_peer("autofaiss", peer, Path(tmp), AMPLE_BYTES, args.queries, truth))
            if args.peer_tight:
                results.update(measure_peer("autofaiss_tight", peer, Path(tmp), tight, args.queries, truth))
        for ours, theirs in (("ours_auto", "autofaiss"), ("ours_hnsw", "autofaiss"),
                             ("ours_auto_tight", "autofaiss_tight")):
            if f"{theirs}_queries_per_s" in results:
                results[f"{ours}_vs_{theirs}_queries"] = ratio(results, ours, theirs, "queries_per_s")
                # autofaiss's build includes its tuning, so ours counts it too where there is one
                field = "build_and_tune_s" if f"{ours}_build_and_tune_s" in results else "build_s"
                results[f"{ours}_vs_{theirs}_build"] = ratio(
                    {**results, f"{theirs}_{field}": results[f"{theirs}_build_s"]}, ours, theirs, field, inverse=True)
    report("retrieve_search", **results)
    assert results["faiss_flat_recall_at_10"] >= 0.99
    assert results["ours_hnsw_recall_at_10"] >= args.target_recall - 0.03, "tuned HNSW should reach the target"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tune-queries", type=int, default=1000, help="held-out queries the tuning uses")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--peer-python", help="a Python with autofaiss installed (default: $UNIMO_AUTOFAISS_PYTHON)")
    parser.add_argument("--peer-tight", action="store_true", help="also run autofaiss within the tight budget")
    run(parser.parse_args())
