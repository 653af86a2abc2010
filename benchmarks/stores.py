"""LMDB feature-store throughput: batched commits (ours) vs one transaction per record (the naive way).

Records are UNITER-style region features (36 boxes x 2048 f16 plus boxes, conf, soft labels).
Prints one JSON line with write and read rates; asserts batching is faster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed  # noqa: E402

from unimo_pipe.pipeline.lmdb_store import LmdbReader, LmdbWriter, pack  # noqa: E402


def make_value(rng: np.random.Generator, boxes: int = 36) -> dict[str, np.ndarray]:
    return {"features": rng.standard_normal((boxes, 2048)).astype(np.float16),
            "norm_bb": rng.random((boxes, 6)).astype(np.float16), "conf": rng.random(boxes).astype(np.float16),
            "soft_labels": rng.random((boxes, 1601)).astype(np.float16)}


def naive_write(path: Path, values: list[dict]) -> None:
    env = lmdb.open(str(path), map_size=1 << 33)
    for i, value in enumerate(values):
        with env.begin(write=True) as txn:
            txn.put(str(i).encode(), pack(value))
    env.close()


def ours_write(path: Path, values: list[dict]) -> None:
    with LmdbWriter(path, commit_every=256) as writer:
        for i, value in enumerate(values):
            writer.put(str(i), value)


def read_all(path: Path, n: int) -> None:
    reader = LmdbReader(path)
    for i in range(n):
        reader[str(i)]
    reader.close()


def run(n: int) -> None:
    rng = np.random.default_rng(0)
    values = [make_value(rng) for _ in range(n)]
    mb = sum(len(pack(v)) for v in values[:10]) / 10 * n / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        naive_s = timed(lambda: naive_write(Path(tmp) / "naive", values))
        ours_s = timed(lambda: ours_write(Path(tmp) / "ours", values))
        read_s = timed(lambda: read_all(Path(tmp) / "ours", n))
    report("stores_lmdb", records=n, megabytes=round(mb, 1),
           naive_write_records_per_s=round(n / naive_s), ours_write_records_per_s=round(n / ours_s),
           write_speedup=round(naive_s / ours_s, 2), read_records_per_s=round(n / read_s),
           read_mb_per_s=round(mb / read_s))
    assert ours_s < naive_s, "batched commits should beat one transaction per record"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    run(parser.parse_args().records)
