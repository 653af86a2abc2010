"""Training data loader throughput: samples/s of pair batches, and how it scales with DataLoader workers.

Synthetic shards at UNITER scale per image (36-100 boxes of 2048-d float16 features) joined with
positives, negatives and retrieved items; the naive way is one process reading and collating in the
loop (workers=0). Reference: a BERT-base-size step on an H100 consumes about 3,000 samples/s, about
2.5 GB/s of float16 region features; the JSON line says how far one node's loader is from that.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402
from unimo_pipe.pipeline.cli import main as cli_main  # noqa: E402
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter  # noqa: E402
from unimo_pipe.pipeline.jsonl import write_json_atomic, write_jsonl  # noqa: E402
from unimo_pipe.pipeline.training_data import BatchPlan, Collator, Examples, PairDataset, make_loader  # noqa: E402

TRAINER_SAMPLES_PER_S = 3000


def build(root: Path, images: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(images)]
    with RegionFeatureWriter(root / "feats", commit_every=64) as writer:
        for name in names:
            n = int(rng.integers(36, 101))
            writer.add(name, {"features": rng.standard_normal((n, 2048)).astype(np.float16),
                              "norm_bb": rng.random((n, 6)), "conf": rng.random(n),
                              "soft_labels": rng.random((n, 1601)).astype(np.float16)})
    captions = [f"a person number {i} rides a red bicycle next to a bus on a busy street" for i in range(images)]
    write_jsonl(root / "pairs.jsonl", [{"id": str(i), "image": names[i], "caption": c} for i, c in enumerate(captions)])
    aug = root / "aug" / "shards" / "00000"
    aug.mkdir(parents=True)
    write_jsonl(aug / "augment.jsonl", [{"id": str(i), "positives": [{"text": c + " again"}] * 3,
                                         "negatives": [{"text": c.replace("red", f"color{j}"), "kind": "x"}
                                                       for j in range(100)]} for i, c in enumerate(captions)])
    (aug / "stats.json").write_text("{}")
    write_json_atomic(root / "aug" / "stage.json", {"stage": "augment", "config_hash": "bench"})
    write_json_atomic(root / "aug" / "summary.json", {"complete": True})
    assert cli_main(["shard", "--pairs", str(root / "pairs.jsonl"), "--augment", str(root / "aug"),
                     "--image-features", str(root / "feats"), "--out", str(root / "shards")]) == 0
    tokenizer_dir = build_tiny_tokenizer(root / "tok", captions[:200])
    return root / "shards", tokenizer_dir


def measure(shards: Path, tokenizer, workers: int, batch_size: int) -> tuple[float, float]:
    examples = Examples(shards, "pair")
    plan = BatchPlan(examples.text_lengths + examples.box_counts(), batch_size=batch_size)
    loader = make_loader(PairDataset(examples), plan, Collator(tokenizer).pairs, workers=workers, pin_memory=False)
    start = time.perf_counter()
    samples = feature_bytes = 0
    for batch in loader:
        samples += len(batch["index"])
        feature_bytes += batch["region_features"].numel() * 2
    elapsed = time.perf_counter() - start
    return samples / elapsed, feature_bytes / elapsed / 1e9


def run(args) -> None:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shards, tokenizer_dir = build(Path(tmp), args.images)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        result: dict[str, object] = {"pairs": args.images, "batch_size": args.batch_size}
        for workers in args.workers:
            rate, gigabytes = measure(shards, tokenizer, workers, args.batch_size)
            result[f"workers_{workers}_samples_per_s"] = round(rate, 1)
            result[f"workers_{workers}_feature_gb_per_s"] = round(gigabytes, 3)
    best = max(result[f"workers_{w}_samples_per_s"] for w in args.workers)
    result["best_vs_naive"] = round(best / result[f"workers_{args.workers[0]}_samples_per_s"], 2)
    result["fraction_of_h100_trainer_demand"] = round(best / TRAINER_SAMPLES_PER_S, 3)
    report("data_loader", usable_cores=len(os.sched_getaffinity(0)), **result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    run(parser.parse_args())
