"""Does the pipeline's data train good models? A known-truth image-text world through the real stages.

The world: each image holds two coloured objects in a spatial relation ("a red dog above a blue cat"),
as region features (object and colour embeddings plus noise, a few clutter regions) with real pixel boxes
that place the objects as the relation says. Each image has two captions, one from each object ("a blue
cat below a red dog"). Train and test images are disjoint draws from the same world.

Everything runs through `unimo_pipe.pipeline.cli.main(argv)`: import-features (a folder of BUTD-style npz
files named `imgNNNNN.npz`, which the pairs name `imgNNNNN.jpg`), import-pairs, augment --scene-graph,
retrieve, shard, pretrain, evaluate. Each configuration is trained from scratch (tiny encoder) and scored
on the held-out images: R@1/5/10 both ways and, per kind of scene-graph hard negative of the test captions,
how often the true caption beats the negative against its image (chance 0.5).

Configurations (CONFIGS): no pretraining; CMCL as the paper writes it (hard negatives, no in-batch ones);
in-batch negatives; both; with retrieval sets (UNIMO's X_I / X_T as positives, unguarded, then guarded by
shard's default minimum scores); the full UNIMO objective (CMCL + MLM/seq2seq + MRM, single-modal too)
from the first step, and with pretrain's defaults (CMCL alone for the first part of the run); and three
that must fail: dropout 0.1 in the tiny encoder, a broken pairing (captions shuffled across images) and a
shortcut-prone negative mix (an extra --vocab of words never seen in the corpus, drawn first).

Prints one JSON line: per configuration the mean over seeds (and each seed) of every figure, the chance
levels, training throughput, and the ratio of the default configuration's R@1 to no pretraining's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

from unimo_pipe.pipeline.cli import main  # noqa: E402

OBJECTS = ["dog", "cat", "horse", "bird", "car", "boat", "chair", "table", "cup", "ball", "tree", "bench"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange"]
RELATIONS = {"vertical": ("above", "below"), "horizontal": ("to the left of", "to the right of")}
# Words the world never uses, for the shortcut-prone mix: drawn before any corpus word (huge counts).
UNSEEN_OBJECTS = ["giraffe", "umbrella", "kite", "laptop", "pizza", "clock", "vase", "sofa", "train", "bowl"]
UNSEEN_COLOURS = ["purple", "pink", "silver", "gold", "tan", "beige"]
WIDTH, HEIGHT, REGION_DIM = 640, 480, 64

TRAIN = ["--tiny-hidden", "64", "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "20", "--workers", "0",
         "--log-every", "50", "--checkpoint-every", "100000", "--eval-pairs", "2"]
CMCL_WITH_RETRIEVAL = ["--weight-language", "0", "--weight-visual", "0", "--no-single-modal"]
CMCL_ONLY = [*CMCL_WITH_RETRIEVAL, "--positives", "0", "--retrieved-images", "0", "--retrieved-texts", "0"]
HARD = ["--negatives", "4"]
NO_HARD = ["--negatives", "0"]
CONFIGS = {  # name -> (training shards, pretrain options)
    "no_pretraining": ("shards", [*CMCL_ONLY, "--in-batch-negatives", "--lr", "0"]),
    "paper_cmcl": ("shards", [*CMCL_ONLY, *HARD, "--no-in-batch-negatives"]),
    "in_batch": ("shards", [*CMCL_ONLY, *NO_HARD, "--in-batch-negatives"]),
    "in_batch_hard": ("shards", [*CMCL_ONLY, *HARD, "--in-batch-negatives"]),
    "retrieval_sets_paper": ("shards-unguarded", [*CMCL_WITH_RETRIEVAL, *HARD, "--in-batch-negatives"]),
    "retrieval_sets": ("shards", [*CMCL_WITH_RETRIEVAL, *HARD, "--in-batch-negatives"]),
    "full_unimo_before": ("shards", [*HARD, "--in-batch-negatives", "--weight-language", "1", "--weight-visual", "1",
                                     "--cmcl-first", "0"]),  # every objective from the first step
    "full_unimo": ("shards", [*HARD]),  # pretrain's defaults: every objective, CMCL alone first
    "dropout_0.1": ("shards", [*CMCL_ONLY, *HARD, "--in-batch-negatives", "--dropout", "0.1"]),
    "broken_pairing": ("shards-shuffled", [*CMCL_ONLY, *NO_HARD, "--in-batch-negatives"]),
    "shortcut_negatives": ("shards-shortcut", [*CMCL_ONLY, *HARD, "--in-batch-negatives"]),
}


def world_image(rng: np.random.Generator, embeddings: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """One image (BUTD npz arrays) and its two captions."""
    first, second = rng.choice(len(OBJECTS), 2, replace=False)
    colours = rng.choice(len(COLOURS), 2)
    axis = "vertical" if rng.random() < 0.5 else "horizontal"
    subject_box, object_box = _placed_boxes(rng, axis)
    regions = [(embeddings["object"][first] + embeddings["colour"][colours[0]], subject_box),
               (embeddings["object"][second] + embeddings["colour"][colours[1]], object_box)]
    for _ in range(rng.integers(2, 5)):  # clutter: no object, anywhere
        x, y = rng.uniform(0, WIDTH - 60), rng.uniform(0, HEIGHT - 60)
        box = [x, y, x + rng.uniform(20, 60), y + rng.uniform(20, 60)]
        regions.append((0.5 * rng.standard_normal(REGION_DIM), box))
    order = rng.permutation(len(regions))
    features = np.stack([regions[i][0] + 0.3 * rng.standard_normal(REGION_DIM) for i in order]).astype(np.float32)
    boxes = np.array([regions[i][1] for i in order], dtype=np.float32)
    a, b = (_noun_phrase(COLOURS[colours[0]], OBJECTS[first]), _noun_phrase(COLOURS[colours[1]], OBJECTS[second]))
    forward, backward = RELATIONS[axis]
    return ({"x": features, "bbox": boxes, "image_w": WIDTH, "image_h": HEIGHT},
            [f"{a} {forward} {b}", f"{b} {backward} {a}"])


def _noun_phrase(colour: str, thing: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {thing}"


def _placed_boxes(rng: np.random.Generator, axis: str) -> tuple[list[float], list[float]]:
    """Pixel boxes (x0, y0, x1, y1) of the subject and the object: above / to the left of the object."""
    size = rng.uniform(80, 160, 2)
    if axis == "vertical":
        x0, x1 = rng.uniform(0, WIDTH - size[0], 2)
        y0 = rng.uniform(0, HEIGHT / 2 - size[1])
        y1 = rng.uniform(HEIGHT / 2, HEIGHT - size[1])
    else:
        y0, y1 = rng.uniform(0, HEIGHT - size[1], 2)
        x0 = rng.uniform(0, WIDTH / 2 - size[0])
        x1 = rng.uniform(WIDTH / 2, WIDTH - size[0])
    return [x0, y0, x0 + size[0], y0 + size[1]], [x1, y1, x1 + size[0], y1 + size[1]]


def build_world(root: Path, *, train_images: int, test_images: int, corpus_images: int = 150, seed: int = 0) -> None:
    """The npz feature folder, train / test / shuffled pair files, a text corpus and the shortcut vocabulary."""
    rng = np.random.default_rng(seed)
    embeddings = {"object": rng.standard_normal((len(OBJECTS), REGION_DIM)),
                  "colour": 0.7 * rng.standard_normal((len(COLOURS), REGION_DIM))}
    (root / "npz").mkdir(parents=True)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    corpus = []
    for index in range(train_images + test_images + corpus_images):
        arrays, captions = world_image(rng, embeddings)
        if index >= train_images + test_images:  # text-only data: captions of images never shown
            corpus += captions
            continue
        np.savez(root / "npz" / f"img{index:05d}.npz", **arrays)
        split = "train" if index < train_images else "test"
        splits[split] += [{"id": f"{split}{index}-{k}", "image": f"img{index:05d}.jpg", "caption": c}
                          for k, c in enumerate(captions)]
    for split, pairs in splits.items():
        _write_jsonl(root / f"{split}.jsonl", pairs)
    shuffled = [p["caption"] for p in splits["train"]]
    rng.shuffle(shuffled)
    _write_jsonl(root / "train-shuffled.jsonl", [{**p, "caption": c} for p, c in zip(splits["train"], shuffled,
                                                                                      strict=True)])
    (root / "corpus.txt").write_text("".join(f"{c}\n" for c in corpus), encoding="utf-8")
    (root / "shortcut-vocab.json").write_text(json.dumps({
        "objects": {w: 100_000 for w in UNSEEN_OBJECTS}, "attributes": {"colour": {w: 100_000 for w in UNSEEN_COLOURS}},
        "relations": {}}))
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(root / "tok", [p["caption"] for p in splits["train"]] + corpus, vocab_size=400)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def cli(*argv: str) -> str:
    """Run one command through main(argv); its stdout. A failure is an error, never a silent figure."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"unimo-pipe {' '.join(map(str, argv[:1]))} exited {code}: {out.getvalue()[-500:]}")
    return out.getvalue()


def prepare_data(root: Path, *, negatives: int = 20, configs: tuple[str, ...] = tuple(CONFIGS)) -> None:
    """Every stage up to the training and test shards the configurations need."""
    wanted = {CONFIGS[name][0] for name in configs}
    cli("import-features", "--source", root / "npz", "--out", root / "feats")
    for split in ("train", "test", "train-shuffled"):
        cli("import-pairs", "--captions", root / f"{split}.jsonl", "--out", root / f"pairs-{split}")
    augment = ["--scene-graph", "--negatives", negatives]
    cli("augment", "--captions", root / "pairs-train", *augment, "--out", root / "aug-train")
    cli("augment", "--captions", root / "pairs-test", *augment, "--out", root / "aug-test")
    shard = ["--image-features", root / "feats", "--max-negatives", negatives]
    cli("shard", "--pairs", root / "pairs-test", "--augment", root / "aug-test", *shard, "--out", root / "test-shards")
    retrieval = []
    if wanted & {"shards", "shards-unguarded"}:
        cli("retrieve", "--pairs", root / "pairs-train", "--image-features", root / "feats", "--image-collection",
            root / "feats", "--text-corpus", root / "corpus.txt", "--exclude", root / "test.jsonl", "--k", "10",
            "--out", root / "retrieval")
        retrieval = ["--retrieval", root / "retrieval"]
    single_modal = ["--text-corpus", root / "corpus.txt", "--image-collection", root / "feats"]
    if "shards" in wanted:
        cli("shard", "--pairs", root / "pairs-train", "--augment", root / "aug-train", *retrieval, *shard,
            *single_modal, "--out", root / "shards")  # shard's default guard on retrieved positives
    if "shards-unguarded" in wanted:
        cli("shard", "--pairs", root / "pairs-train", "--augment", root / "aug-train", *retrieval, *shard,
            "--min-retrieved-image-score", "-1", "--min-retrieved-text-score", "-1", "--out", root / "shards-unguarded")
    if "shards-shuffled" in wanted:
        cli("shard", "--pairs", root / "pairs-train-shuffled", *shard, "--out", root / "shards-shuffled")
    if "shards-shortcut" in wanted:
        cli("augment", "--captions", root / "pairs-train", *augment, "--vocab", root / "shortcut-vocab.json",
            "--out", root / "aug-shortcut")
        cli("shard", "--pairs", root / "pairs-train", "--augment", root / "aug-shortcut", *shard,
            "--out", root / "shards-shortcut")


def run_config(root: Path, name: str, *, seed: int, steps: int) -> dict:
    """Train configuration `name` from scratch and score it on the test shards (evaluate's JSON)."""
    shards, options = CONFIGS[name]
    out = root / "runs" / f"{name}-seed{seed}"
    steps_here = 1 if name == "no_pretraining" else steps
    started = time.perf_counter()
    cli("pretrain", "--shards", root / shards, "--tokenizer", root / "tok", "--out", out, *TRAIN, *options,
        "--steps", steps_here, "--seed", seed)
    seconds = time.perf_counter() - started
    scores = json.loads(cli("evaluate", "--model", out / "model", "--shards", root / "test-shards", "--tokenizer",
                            root / "tok"))
    scores["train_seconds"] = round(seconds, 2)
    scores["train_pairs_per_s"] = round(steps_here * 32 / seconds, 1)
    (out / "test_scores.json").write_text(json.dumps(scores))
    return scores


def learns(scores: dict, *, min_r1_over_chance: float = 30.0, min_accuracy: float = 0.8) -> list[str]:
    """Why a configuration's test scores do NOT show learning (empty: it learnt). The checks: text->image
    R@1 at least `min_r1_over_chance` times chance, and the true caption beating an object-replaced and an
    attribute-replaced one at least `min_accuracy` of the time (chance 0.5)."""
    problems = []
    if scores["ir_r1"] < min_r1_over_chance * scores["chance_r1"]:
        problems.append(f"ir_r1 {scores['ir_r1']} < {min_r1_over_chance} x chance {scores['chance_r1']}")
    for kind in ("replace_object", "replace_attribute"):
        accuracy = scores.get("compositional", {}).get(kind, 0.0)
        if accuracy < min_accuracy:
            problems.append(f"{kind} accuracy {accuracy} < {min_accuracy}")
    return problems


def summarise(per_seed: list[dict]) -> dict:
    keys = [k for k in per_seed[0] if k.startswith(("ir_r", "tr_r"))]
    summary = {k: round(float(np.mean([s[k] for s in per_seed])), 4) for k in keys}
    kinds = sorted({kind for s in per_seed for kind in s.get("compositional", {})})
    summary["compositional"] = {kind: round(float(np.mean([s["compositional"].get(kind, np.nan) for s in per_seed])),
                                            4) for kind in kinds}
    summary["learns"] = all(not learns(s) for s in per_seed)
    summary["per_seed"] = [{k: s[k] for k in (*keys, "compositional", "train_pairs_per_s") if k in s}
                           for s in per_seed]
    return summary


def run(args) -> None:
    root = Path(args.work)
    started = time.perf_counter()
    build_world(root, train_images=args.train_images, test_images=args.test_images)
    prepare_data(root, configs=tuple(args.configs))
    prepared = time.perf_counter() - started
    results = {name: summarise([run_config(root, name, seed=seed, steps=args.steps) for seed in args.seeds])
               for name in args.configs}
    chance = {k: v for k, v in json.loads(cli("evaluate", "--model", root / "runs" / f"{args.configs[0]}-seed0"
                                              / "model", "--shards", root / "test-shards", "--tokenizer",
                                              root / "tok")).items() if k.startswith("chance")}
    speeds = [s["train_pairs_per_s"] for r in results.values() for s in r["per_seed"]]
    line = {"train_images": args.train_images, "test_images": args.test_images, "steps": args.steps,
            "seeds": args.seeds, "chance": chance, "configs": results,
            "train_pairs_per_s": round(float(np.median(speeds)), 1), "prepare_seconds": round(prepared, 1),
            "seconds": round(time.perf_counter() - started, 1)}
    if "full_unimo" in results and "no_pretraining" in results:  # pretrain's defaults against no training
        line["ratio_ir_r1_vs_no_pretraining"] = round(results["full_unimo"]["ir_r1"]
                                                      / max(results["no_pretraining"]["ir_r1"], 1e-4), 1)
    report("quality", **line)


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", default="", help="folder for the world and the runs (default: a temporary one)")
    parsed = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        parsed.work = parsed.work or scratch
        run(parsed)
