"""Caption generation throughput: captions/s, greedy and beam 3, with the key/value cache (ours) against
recomputing the whole sequence every step (the naive way), in the same run.

Every caption runs exactly --new-tokens steps (min = max new tokens, so no row stops early and both ways
do the same work); images have 36 regions (BUTD's fixed count). CPU: the tiny size (hidden 128, 4 layers);
GPU: the base size (hidden 768, 12 layers) in bf16 autocast. The cached and recomputed captions are
checked to be the same tokens. Prints one JSON line; asserts the cache is faster (loosely: a loaded
machine still passes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed_call  # noqa: E402

from unimo_pipe.models.decoding import generate  # noqa: E402
from unimo_pipe.models.decoding_options import SearchOptions  # noqa: E402
from unimo_pipe.models.generator import GenerationSetup, Generator  # noqa: E402
from unimo_pipe.models.unified import UnifiedModel, tiny_encoder  # noqa: E402

VOCAB, START, PAD, END, MASK = 1000, 0, 1, 2, 4


def build(gpu: bool, device: torch.device) -> Generator:
    torch.manual_seed(0)
    size = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072} if gpu else {"hidden": 128, "layers": 4,
                                                                                        "heads": 4}
    model = UnifiedModel(tiny_encoder(VOCAB, **size), region_dim=2048)
    setup = GenerationSetup("caption", START, END, PAD, (START, PAD, MASK), max_source_tokens=2, max_target_tokens=32)
    return Generator(model, setup).to(device).eval()


def image_batch(size: int, regions: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"region_features": torch.randn(size, regions, 2048, generator=generator).half().to(device),
            "region_boxes": torch.rand(size, regions, 7, generator=generator).half().to(device),
            "region_mask": torch.ones(size, regions, dtype=torch.bool, device=device),
            "source_ids": torch.full((size, 1), START, device=device),
            "source_mask": torch.ones(size, 1, dtype=torch.bool, device=device)}


def captions_per_second(generator, batch, options, *, cached: bool, device) -> tuple[float, list]:
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            result = generate(generator, batch, options, cached=cached)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    run()  # warm-up
    seconds, hypotheses = timed_call(run)
    return len(batch["source_ids"]) / seconds, [h.tokens for h in hypotheses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="captions per batch")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated per caption")
    parser.add_argument("--min-speedup", type=float, default=1.5, help="fail below this cached / recomputed ratio")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    generator = build(gpu, device)
    batch = image_batch(args.images, 36, device)
    fields = {}
    for name, beams in (("greedy", 1), ("beam3", 3)):
        options = SearchOptions(beam_size=beams, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
        cached, cached_tokens = captions_per_second(generator, batch, options, cached=True, device=device)
        naive, naive_tokens = captions_per_second(generator, batch, options, cached=False, device=device)
        assert cached_tokens == naive_tokens, f"{name}: the cache changed the captions"
        fields[f"{name}_captions_per_s"] = round(cached, 2)
        fields[f"{name}_recomputed_captions_per_s"] = round(naive, 2)
        fields[f"{name}_speedup"] = round(cached / naive, 2)
    report("generate", device=torch.cuda.get_device_name() if gpu else "cpu", size="base" if gpu else "tiny",
           images=args.images, regions=36, new_tokens=args.new_tokens, **fields)
    for name in ("greedy", "beam3"):
        assert fields[f"{name}_speedup"] >= args.min_speedup, f"{name}: the cache is not faster ({fields})"


if __name__ == "__main__":
    main()
