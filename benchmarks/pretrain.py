"""Pretraining step throughput: samples/s, tokens/s and model-FLOPs utilisation (MFU).

Measured twice in the same run: the naive way (fp32, eager, for-each AdamW) and ours (bf16 autocast,
fused AdamW and torch.compile'd layers on GPU), with their ratio.

One optimizer step = the full objective mix (CMCL with 1 positive, 4 negatives, 1 retrieved image and
text per pair; MLM or seq2seq; MRM) on synthetic batches of 64 text tokens + 100 regions. GPU: the base
size (12 layers, hidden 768) in bf16, against the H100's dense bf16 peak (989 TFLOP/s); CPU: a tiny
size, where MFU is not meaningful and is left out. Model FLOPs count 6 x encoder parameters x every
token of every encoder pass the step makes. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models.pretraining import ObjectiveWeights, UnimoPretraining  # noqa: E402
from unimo_pipe.models.unified import UnifiedModel, tiny_encoder  # noqa: E402

H100_BF16_PEAK = 989e12


def synthetic_batch(size: int, text: int, regions: int, region_dim: int, vocab: int, device) -> dict:
    def ids(n):
        return torch.randint(5, vocab, (n, text), device=device), torch.ones(n, text, dtype=torch.bool, device=device)

    def images(n):
        features = torch.randn(n, regions, region_dim, device=device).half()
        boxes = torch.rand(n, regions, 7, device=device).half()
        return features, boxes, torch.ones(n, regions, dtype=torch.bool, device=device)

    batch = {"index": list(range(size))}
    batch["text_ids"], batch["text_mask"] = ids(size)
    batch["region_features"], batch["region_boxes"], batch["region_mask"] = images(size)
    for name, per_pair in (("positives", 1), ("negatives", 4), ("retrieved_texts", 1)):
        batch[f"{name}_ids"], batch[f"{name}_mask"] = ids(size * per_pair)
        batch[f"{name}_owner"] = torch.arange(size, device=device).repeat_interleave(per_pair)
        batch[f"{name}_per_pair"] = per_pair
    batch["retrieved_features"], batch["retrieved_boxes"], batch["retrieved_region_mask"] = images(size)
    batch["retrieved_images_owner"] = torch.arange(size, device=device)
    batch["retrieved_images_per_pair"] = 1
    return batch


def tokens_per_sample(text: int, regions: int) -> int:
    """Every token the step's encoder passes see, per pair."""
    image = regions + 1
    cmcl = image + text + 6 * text + image  # pair image, caption, 6 augmentation texts, retrieved image
    return cmcl + 2 * (image + text)  # language pass + visual pass


def build(gpu: bool, args, device) -> tuple[UnifiedModel, UnimoPretraining]:
    torch.manual_seed(0)
    if gpu:
        encoder = tiny_encoder(50265, hidden=768, layers=12, heads=12, intermediate=3072)  # base size
    else:
        encoder = tiny_encoder(1000, hidden=args.cpu_hidden, layers=2, heads=2)
    model = UnifiedModel(encoder, region_dim=2048)
    module = UnimoPretraining(model, vocab_size=encoder.config.vocab_size, mask_id=4, special_ids=[0, 1, 2],
                              soft_label_classes=0)  # the synthetic batches have no soft labels
    return model, module.to(device)


def samples_per_s(device, args, *, fast: bool) -> tuple[float, UnifiedModel]:
    """Steps per second of the naive way (fp32, eager, for-each AdamW) or ours (bf16 autocast on GPU, fused
    AdamW, and torch.compile'd layers with --compile)."""
    gpu = device.type == "cuda"
    model, module = build(gpu, args, device)
    if fast and args.compile:
        model.compile()
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-5, fused=fast and gpu)
    batch = synthetic_batch(args.batch_size, 64, 100, 2048, model.encoder.config.vocab_size, device)
    generator = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast and gpu):
            losses = module(batch, generator, ObjectiveWeights())
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # compilation happens here (one graph per sequence shape)
        step()
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if gpu:
        torch.cuda.synchronize()
    return args.batch_size * args.steps / (time.perf_counter() - start), model


def run(args) -> None:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    args.batch_size = args.batch_size or (64 if gpu else 8)
    naive, _ = samples_per_s(device, args, fast=False)
    ours, model = samples_per_s(device, args, fast=True)
    tokens = ours * tokens_per_sample(64, 100)
    params = sum(p.numel() for p in model.encoder.encoder.parameters())
    result = {"device": torch.cuda.get_device_name() if gpu else "cpu", "hidden": model.encoder.config.hidden_size,
              "layers": model.encoder.config.num_hidden_layers, "batch_size": args.batch_size,
              "compile": args.compile, "naive_samples_per_s": round(naive, 2), "samples_per_s": round(ours, 2),
              "ratio": round(ours / naive, 2), "tokens_per_s": round(tokens)}
    if gpu:
        result["mfu"] = round(6 * params * tokens / H100_BF16_PEAK, 4)
        result["naive_mfu"] = round(6 * params * naive * tokens_per_sample(64, 100) / H100_BF16_PEAK, 4)
    report("pretrain", **result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: 64 on GPU, 8 on CPU)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                        help="torch.compile the layers in our run (default: on GPU only)")
    parser.add_argument("--cpu-hidden", type=int, default=64)
    run(parser.parse_args())
