"""LMDB feature-store throughput: batched commits (ours) vs one transaction per record (the naive way), and
UNITER-compatible reads: `RegionFeatureReader.__getitem__` vs UNITER's own `DetectFeatLmdb.__getitem__`.

Records are UNITER-style region features (36 boxes x 2048 f16 plus boxes, conf, soft labels; nbb 30, as a
conf_th cut leaves). UNITER's reader is reproduced as its data/data.py does it (msgpack-numpy patched
`msgpack.loads`, then `torch.tensor(features[:nbb]).float()` and the same for norm_bb), and so is the way
ours read before (the whole dump widened to f32, then cut). Reads are measured in interleaved rounds, the
best of each kept. Prints one JSON line; asserts only what load cannot flip: reads return UNITER's values,
and reading only the fields asked for beats reading them all (write rates are reported: a loaded disk flips
them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed  # noqa: E402

from unimo_pipe.pipeline.feature_store import RegionFeatureReader, RegionFeatureWriter, nbb_file_name  # noqa: E402
from unimo_pipe.pipeline.lmdb_store import LmdbReader, LmdbWriter, pack, unpack  # noqa: E402

NBB = 30  # of the 36 stored boxes


class UniterDetectFeatLmdb:
    """UNITER data/data.py DetectFeatLmdb(compress=False): env and txn opened once, `__getitem__` as there."""

    def __init__(self, img_dir: Path, db_name: str, nbb_name: str):
        msgpack_numpy.patch()  # as UNITER's data.py does on import
        self.name2nbb = json.loads((img_dir / nbb_name).read_text())
        self.env = lmdb.open(str(img_dir / db_name), readonly=True, create=False)
        self.txn = self.env.begin(buffers=True)

    def __getitem__(self, file_name: str):
        dump = self.txn.get(file_name.encode("utf-8"))
        nbb = self.name2nbb[file_name]
        img_dump = msgpack.loads(dump, raw=False)
        img_feat = torch.tensor(img_dump["features"][:nbb, :]).float()
        img_bb = torch.tensor(img_dump["norm_bb"][:nbb, :]).float()
        return img_feat, img_bb


def full_dump_getitem(reader: RegionFeatureReader, name: str):
    """How `RegionFeatureReader.__getitem__` read before: every field decoded and widened, then cut."""
    dump = unpack(reader.db.get_raw(name))
    nbb = reader.name2nbb[name]
    widened = {k: (a.astype(np.float32) if a.dtype == np.float16 else a)[:nbb] for k, a in dump.items()}
    return widened["features"], widened["norm_bb"]


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


def write_feature_db(root: Path, values: list[dict]) -> list[str]:
    names = [f"{i}.jpg" for i in range(len(values))]
    with RegionFeatureWriter(root) as writer:
        for name, value in zip(names, values, strict=True):
            writer.add(name, value)
    (root / nbb_file_name()).write_text(json.dumps({name: NBB for name in names}))
    return names


def compare_reads(root: Path, values: list[dict], rounds: int) -> dict[str, object]:
    names = write_feature_db(root, values)
    ours = RegionFeatureReader(root)
    copy = shutil.copytree(root, root.with_name(root.name + "_uniter"))  # LMDB opens a path once per process
    saved = {name: getattr(msgpack, name) for name in ("loads", "unpackb", "dumps", "packb")}
    uniter = UniterDetectFeatLmdb(copy, ours.db.path.name, nbb_file_name())
    try:
        readers = {"uniter": uniter.__getitem__, "ours": ours.__getitem__,
                   "full_dump": lambda name: full_dump_getitem(ours, name)}
        for name in names[:50]:
            theirs = [t.numpy() for t in uniter[name]]
            for mine in (ours[name], full_dump_getitem(ours, name)):
                assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(mine, theirs, strict=True))
        best = {label: float("inf") for label in readers}
        for _ in range(rounds):
            for label, read in readers.items():
                best[label] = min(best[label], timed(lambda read=read: [read(name) for name in names]))
    finally:
        for name, value in saved.items():
            setattr(msgpack, name, value)
        uniter.env.close()
    rates = {f"{label}_getitem_images_per_s": round(len(names) / seconds) for label, seconds in best.items()}
    return {**rates, "getitem_vs_uniter": round(best["uniter"] / best["ours"], 2),
            "getitem_vs_full_dump": round(best["full_dump"] / best["ours"], 2)}


def run(n: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    values = [make_value(rng) for _ in range(n)]
    mb = sum(len(pack(v)) for v in values[:10]) / 10 * n / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        naive_s = timed(lambda: naive_write(Path(tmp) / "naive", values))
        ours_s = timed(lambda: ours_write(Path(tmp) / "ours", values))
        read_s = timed(lambda: read_all(Path(tmp) / "ours", n))
        reads = compare_reads(Path(tmp) / "image_db", values, rounds)
    report("stores_lmdb", records=n, megabytes=round(mb, 1),
           naive_write_records_per_s=round(n / naive_s), ours_write_records_per_s=round(n / ours_s),
           write_speedup=round(naive_s / ours_s, 2), read_records_per_s=round(n / read_s),
           read_mb_per_s=round(mb / read_s), **reads)
    assert reads["getitem_vs_full_dump"] > 1.1, "decoding only features and norm_bb should beat decoding all"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved read rounds (the best of each kept)")
    args = parser.parse_args()
    run(args.records, args.rounds)
