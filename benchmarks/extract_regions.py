"""extract-regions throughput: the naive way vs ours, same images, same model, same run.

Naive: one image at a time, float32, decoding in the main loop (what the public BUTD ports do).
Ours: FrozenBN folded into the convs, DataLoader decode workers, padded batches (results equal
single-image ones), bf16 + channels_last on GPU. Default: the full-size BUTD architecture with random
weights at 600x1000 on a GPU, the tiny architecture on CPU (the full one takes many seconds per image
on 2 CPU cores). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models.detector import build_detector  # noqa: E402
from unimo_pipe.models.extractor import DecodedImages, RegionExtractor  # noqa: E402


def write_images(folder: Path, count: int) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        width, height = (640, 480) if i % 2 else (500, 375)
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        items.append((path.name, path))
    return items


def naive(model, items, device: str) -> float:
    decode = DecodedImages(items, min_size=600, max_size=1000, max_pixels=10**9)
    model.set_fold_norms(False)
    start = time.perf_counter()
    for i in range(len(items)):
        _, (tensor, (width, height)) = decode[i]
        batch = tensor[None].float().to(device)
        model.detect(batch, [(tensor.shape[1], tensor.shape[2])], [(height, width)])
    _sync(device)
    model.set_fold_norms(True)
    return time.perf_counter() - start


def ours(model, items, device: str, batch_size: int, workers: int) -> float:
    extractor = RegionExtractor(model=model, device=device, precision="bf16" if device == "cuda" else "fp32",
                                batch_size=batch_size, workers=workers, min_size=600, max_size=1000,
                                max_pixels=10**9)
    start = time.perf_counter()
    for _ in extractor.run(items):
        pass
    _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.batch_size = args.batch_size or (8 if device == "cuda" else 1)
    detector = args.detector or ("butd-r101" if device == "cuda" else "tiny")
    model = build_detector(detector).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        items = write_images(Path(tmp), args.images)
        naive(model, items[:2], device)  # warm-up
        naive_s = naive(model, items, device)
        ours_s = ours(model, items, device, args.batch_size, args.workers)
    report("extract_regions", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", detector=detector,
           images=args.images, batch_size=args.batch_size, workers=args.workers,
           naive_images_per_s=round(args.images / naive_s, 2), ours_images_per_s=round(args.images / ours_s, 2),
           speedup=round(naive_s / ours_s, 2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detector", choices=("butd-r101", "tiny"), default=None)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on GPU, 1 on CPU")
    parser.add_argument("--workers", type=int, default=2)
    run(parser.parse_args())
