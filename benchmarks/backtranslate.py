"""Back-translation throughput: the naive way (nlpaug-style) vs ours with each engine, same run, same models.

Measured twice: on captions with repeats (as caption sets have), and on all-distinct captions, where
only batching and the engine count. Naive: fixed batches of 32 in input order, plain `generate` in
float32, every caption translated as often as it occurs. Ours: each distinct caption once,
length-sorted token-budget batches, inference_mode (bf16 on GPU), and the CTranslate2 engine.
Beam-5 round trip (en -> de -> en), one output each. CPU: tiny Marian models built on the fly;
GPU: full-size random Marian configs (6+6 layers, d 512).

End to end, against nlpaug (`BackTranslationAug`, one unfiltered greedy round trip per caption) on the same
models and distinct captions: ours is `BackTranslator.run` as `augment --backtranslate` runs it (3 sampled
positives, filters, up to 3 rounds, the default translation budget). These random models' outputs are
mostly rejected, the worst case for the rounds: the line reports the translations each caption cost. nlpaug
runs in a Python that has it (`--peer-python`, or $UNIMO_NLPAUG_PYTHON) through
benchmarks/peers/nlpaug_peer.py; without one the line says so.

Prints one JSON line; asserts only what load cannot flip: the translations per caption stay within the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.models.backtranslation import TRANSLATIONS_PER_POSITIVE, BackTranslator  # noqa: E402
from unimo_pipe.models.tiny_translation import build_tiny_marian  # noqa: E402
from unimo_pipe.models.translator import Decoding, build_engine, convert_for_ctranslate2  # noqa: E402

PEER_SCRIPT = Path(__file__).parent / "peers" / "nlpaug_peer.py"
POSITIVES = 3

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "unimo_pipe" / "workflows" / "demo_data"


def captions(count: int) -> list[str]:
    texts = [json.loads(line)["caption"] for line in (DATA / "captions.jsonl").read_text().splitlines()]
    texts += [line for line in (DATA / "corpus.txt").read_text().splitlines()][:20]
    return (texts * (count // len(texts) + 1))[:count]  # repeats, as real caption sets have


def naive_round_trip(forward, backward, texts: list[str], decoding: Decoding) -> list[str]:
    def translate(engine, batch_texts):
        out = []
        for start in range(0, len(batch_texts), 32):
            inputs = engine.tokenizer(batch_texts[start : start + 32], return_tensors="pt", padding=True,
                                      truncation=True).to(engine.device)
            generated = engine.model.float().generate(**inputs, num_beams=decoding.beam_size,
                                                      max_new_tokens=decoding.max_new_tokens)
            out += engine.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return out

    return translate(backward, translate(forward, texts))


def ours_round_trip(forward, backward, texts: list[str], decoding: Decoding) -> list[str]:
    unique = list(dict.fromkeys(texts))
    pivots = [r[0] for r in forward.translate(unique, decoding)]
    back = dict(zip(unique, (r[0] for r in backward.translate(pivots, decoding)), strict=True))
    return [back[t] for t in texts]


def models(folder: Path, device: str) -> dict[str, Path]:
    texts = (DATA / "corpus.txt").read_text().splitlines()
    paths = {}
    for source, target in (("en", "de"), ("de", "en")):
        path = build_tiny_marian(folder / f"{source}-{target}", source=source, target=target, texts=texts)
        if device == "cuda":  # the real size: opus-mt's Marian configuration, random weights
            from transformers import MarianConfig, MarianMTModel

            config = MarianConfig.from_pretrained(path)
            config.update({"d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_ffn_dim": 2048,
                           "decoder_ffn_dim": 2048, "encoder_attention_heads": 8, "decoder_attention_heads": 8})
            MarianMTModel(config).save_pretrained(path)
        paths[f"{source}-{target}"] = path
        convert_for_ctranslate2(str(path), folder / f"ct2-{source}-{target}")
    return paths


def end_to_end(label: str, engines, texts: list[str], max_new_tokens: int) -> dict[str, object]:
    translator = BackTranslator(round_trips={"de": tuple(engines)}, method="sample", positives=POSITIVES,
                                max_rounds=3, decoding=Decoding(max_new_tokens=max_new_tokens))
    translator.run(texts[:8])  # warm-up
    start = time.perf_counter()
    done = translator.run(texts)
    seconds = time.perf_counter() - start
    return {f"{label}_bt_captions_per_s": round(len(texts) / seconds, 1),
            f"{label}_bt_translations_per_caption": round(done.translations / len(texts), 2),
            f"{label}_bt_translations_per_s": round(done.translations / seconds, 1),
            f"{label}_bt_positives_per_caption": round(sum(map(len, done.positives)) / len(texts), 2),
            f"{label}_bt_budget_reached": done.budget_reached}


def nlpaug(python: str, paths: dict[str, Path], texts: list[str], folder: Path, device: str, max_new_tokens: int):
    captions = folder / "captions.json"
    captions.write_text(json.dumps(texts))
    done = subprocess.run([python, str(PEER_SCRIPT), str(paths["en-de"]), str(paths["de-en"]), str(captions),
                           "--max-length", str(max_new_tokens), "--device", device], capture_output=True, text=True)
    if done.returncode != 0:
        return {"nlpaug_error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return {"nlpaug_captions_per_s": round(len(texts) / seconds, 1),
            "nlpaug_translations_per_s": round(2 * len(texts) / seconds, 1)}


def run(args) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = captions(args.captions)
    decoding = Decoding(method="beam", beam_size=5, max_new_tokens=args.max_new_tokens)
    result: dict[str, object] = {"device": device, "captions": len(texts), "distinct": len(set(texts))}
    with tempfile.TemporaryDirectory() as tmp:
        paths = models(Path(tmp), device)
        hf = [build_engine("transformers", str(paths[d]), device=device) for d in ("en-de", "de-en")]
        ct2 = [build_engine("ctranslate2", str(Path(tmp) / f"ct2-{d}"), device=device) for d in ("en-de", "de-en")]
        distinct = [f"{t} Number {i}." for i, t in enumerate(texts)]  # no repeats: batching alone
        for suffix, inputs in (("", texts), ("_all_distinct", distinct)):
            for label, fn, engines in (("naive", naive_round_trip, hf), ("ours_transformers", ours_round_trip, hf),
                                       ("ours_ctranslate2", ours_round_trip, ct2)):
                fn(*engines, inputs[:8], decoding)  # warm-up
                start = time.perf_counter()
                fn(*engines, inputs, decoding)
                result[f"{label}{suffix}_captions_per_s"] = round(len(inputs) / (time.perf_counter() - start), 1)
            for label in ("ours_transformers", "ours_ctranslate2"):
                result[f"{label}{suffix}_vs_naive"] = round(
                    result[f"{label}{suffix}_captions_per_s"] / result[f"naive{suffix}_captions_per_s"], 2)
        e2e = distinct[: args.e2e_captions]
        result["e2e_captions"] = len(e2e)
        result.update(end_to_end("ours_transformers", hf, e2e, args.max_new_tokens))
        result.update(end_to_end("ours_ctranslate2", ct2, e2e, args.max_new_tokens))
        peer = args.peer_python or os.environ.get("UNIMO_NLPAUG_PYTHON")
        result["peer"] = "nlpaug" if peer else "not run: pass --peer-python (a Python with nlpaug)"
        if peer:
            result.update(nlpaug(peer, paths, e2e, Path(tmp), device, args.max_new_tokens))
        if "nlpaug_captions_per_s" in result:
            for label in ("ours_transformers", "ours_ctranslate2"):
                result[f"{label}_bt_vs_nlpaug_captions"] = round(
                    result[f"{label}_bt_captions_per_s"] / result["nlpaug_captions_per_s"], 2)
                result[f"{label}_bt_vs_nlpaug_translations"] = round(
                    result[f"{label}_bt_translations_per_s"] / result["nlpaug_translations_per_s"], 2)
    report("backtranslate", **result)
    for label in ("ours_transformers", "ours_ctranslate2"):
        assert result[f"{label}_bt_translations_per_caption"] <= TRANSLATIONS_PER_POSITIVE * POSITIVES


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--captions", type=int, default=600)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--e2e-captions", type=int, default=200, help="distinct captions run end to end")
    parser.add_argument("--peer-python", help="a Python with nlpaug installed (default: $UNIMO_NLPAUG_PYTHON)")
    run(parser.parse_args())
