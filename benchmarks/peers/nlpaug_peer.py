"""The nlpaug side of benchmarks/backtranslate.py, run by a Python with nlpaug installed.

    PEER_PYTHON nlpaug_peer.py FORWARD_MODEL BACKWARD_MODEL CAPTIONS.json [--max-length N]

`nlpaug.augmenter.word.BackTranslationAug` over the captions (one round trip each, as nlpaug does it:
one batch padded to the longest, greedy `generate`), one thread, after a warm-up on 8 of them. Prints one
JSON line: seconds, captions and the number of outputs.
"""

from __future__ import annotations

import argparse
import json
import time

import nlpaug.augmenter.word as naw
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("forward")
    parser.add_argument("backward")
    parser.add_argument("captions")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts = json.loads(open(args.captions, encoding="utf-8").read())
    augmenter = naw.BackTranslationAug(from_model_name=args.forward, to_model_name=args.backward, device=args.device,
                                       max_length=args.max_length)
    augmenter.augment(texts[:8])
    start = time.perf_counter()
    outputs = augmenter.augment(texts)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "captions": len(texts), "outputs": len(outputs)}))


if __name__ == "__main__":
    main()
