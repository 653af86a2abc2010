"""The autofaiss side of benchmarks/retrieve.py, run by its own Python (autofaiss needs numpy < 2).

    PEER_PYTHON autofaiss_peer.py BASE.npy QUERIES.npy OUT_PREFIX --budget-bytes N [--k 10]

Builds one index with autofaiss's defaults (its own index choice and search-parameter tuning) within the
memory budget, one thread, then searches the queries. Writes OUT_PREFIX.rows.npy and prints one JSON line:
build and search seconds, the index key and the parameters autofaiss chose.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import faiss
import numpy as np
from autofaiss import build_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("queries")
    parser.add_argument("out_prefix")
    parser.add_argument("--budget-bytes", type=int, required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    base, queries = np.load(args.base), np.load(args.queries)
    start = time.perf_counter()
    index, infos = build_index(embeddings=base, save_on_disk=False, metric_type="ip", nb_cores=1,
                               max_index_memory_usage=f"{args.budget_bytes}B",
                               current_memory_available=f"{2 * args.budget_bytes + 2**33}B",
                               min_nearest_neighbors_to_retrieve=args.k, verbose=logging.ERROR)
    build_s = time.perf_counter() - start
    if index is None:
        raise SystemExit(f"autofaiss built no index within {args.budget_bytes} bytes")
    start = time.perf_counter()
    _, rows = index.search(queries, args.k)
    search_s = time.perf_counter() - start
    np.save(f"{args.out_prefix}.rows.npy", rows)
    print(json.dumps({"build_s": build_s, "search_s": search_s, "index_key": (infos or {}).get("index_key"),
                      "index_param": (infos or {}).get("index_param"),
                      "size_bytes": (infos or {}).get("size in bytes")}))


if __name__ == "__main__":
    main()
