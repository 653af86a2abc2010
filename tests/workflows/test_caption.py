from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.workflows.conftest import save_tiny_pretrained
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter
from unimo_pipe.pipeline.formats import GENERATIONS_FILE
from unimo_pipe.pipeline.outputs import iter_output_jsonl

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "star"]
TRAIN_IMAGES, IMAGES = 48, 72


def _captions(colour: str, shape: str) -> list[str]:
    return [f"a {colour} {shape} on the table", f"the {shape} is {colour}"]


@pytest.fixture(scope="module")
def caption_inputs(tmp_path_factory):
    """72 images whose regions encode a colour (half of them) and a shape (the other half), captioned by
    both in two ways; Karpathy-split JSON, 48 train and 24 val images (every combination in both). The
    caption needs the image: no constant caption fits more than a twelfth of them. Plus a tiny saved
    model and a tokenizer trained on the captions."""
    root = tmp_path_factory.mktemp("caption")
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((len(COLOURS) + len(SHAPES), 16))
    images = []
    with RegionFeatureWriter(root / "feats") as writer:
        for i in range(IMAGES):
            colour, shape = i % len(COLOURS), (i // len(COLOURS)) % len(SHAPES)
            n = 6 + i % 4
            features = 0.3 * rng.standard_normal((n, 16))
            features[: n // 2] += basis[colour]
            features[n // 2:] += basis[len(COLOURS) + shape]
            writer.add(f"img{i}.jpg", {"features": features, "conf": np.ones(n),
                                       "norm_bb": np.tile([0.1, 0.1, 0.6, 0.6, 0.5, 0.5], (n, 1))})
            sentences = [{"raw": text, "sentid": 2 * i + j}
                         for j, text in enumerate(_captions(COLOURS[colour], SHAPES[shape]))]
            images.append({"filename": f"img{i}.jpg", "filepath": "val2014",
                           "split": "train" if i < TRAIN_IMAGES else "val", "sentences": sentences})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    save_tiny_pretrained(root, [s["raw"] for im in images for s in im["sentences"]] * 3)
    return root


@pytest.fixture(scope="module")
def untrained_generator(caption_inputs):
    """A generator saved straight from the tiny model (random head): for the plumbing of generate."""
    from unimo_pipe.models.generator import GenerationSetup, Generator
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel

    tokenizer = load_tokenizer(str(caption_inputs / "tok"))
    setup = GenerationSetup.for_tokenizer(tokenizer, task="caption", max_source_tokens=2, max_target_tokens=16)
    Generator(UnifiedModel.from_pretrained(caption_inputs / "pretrained"), setup).save_pretrained(
        caption_inputs / "generator")
    return caption_inputs / "generator"


def generate(root, model, out, *extra):
    return main(["generate", "--model", str(model), "--features", str(root / "feats"), "--tokenizer",
                 str(root / "tok"), "--out", str(out), "--device", "cpu", *extra])


def best_constant_cider(references: dict[str, list[str]], candidates: set[str]) -> float:
    from unimo_pipe.models.caption_metrics import caption_scores

    return max(caption_scores(dict.fromkeys(references, c), references, metrics=("CIDEr-D",), use_java=False)[0]
               ["CIDEr-D"] for c in candidates)


@pytest.mark.slow  # about 30 s on CPU, most of it Java (validation's PTB tokenizer, evaluate-caption's METEOR)
def test_caption_finetune_learns_a_task_that_needs_the_image_then_generate_and_evaluate(caption_inputs, tmp_path,
                                                                                         capsys):
    from unimo_pipe.models.caption_metrics import caption_scores

    root, out = caption_inputs, tmp_path / "run"
    assert main(["finetune-caption", "--model", str(root / "pretrained"), "--captions", str(root / "dataset_coco.json"),
                 "--features", str(root / "feats"), "--tokenizer", str(root / "tok"), "--out", str(out),
                 "--batch-size", "16", "--workers", "0", "--steps", "300", "--lr", "3e-3", "--warmup-steps", "20",
                 "--log-every", "50", "--eval-every", "150"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert {"loss", "loss_generation", "train_token_accuracy", "val_cider_d"} <= set(rows[2])
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    scores = json.loads((out / "caption_scores.json").read_text())
    assert scores["images"] == IMAGES - TRAIN_IMAGES  # the val split, held out

    generations = tmp_path / "captions"
    assert generate(root, out / "model", generations, "--captions", str(root / "dataset_coco.json"), "--split", "val",
                    "--beam-size", "3", "--shard-size", "10") == 0
    captions = {row["image"]: row["text"] for row in iter_output_jsonl(generations, GENERATIONS_FILE)}
    assert len(captions) == IMAGES - TRAIN_IMAGES
    data = json.loads((root / "dataset_coco.json").read_text())["images"]
    references = {f"img{i}.jpg": [s["raw"] for s in im["sentences"]] for i, im in enumerate(data) if i >= TRAIN_IMAGES}
    learned = caption_scores(captions, references, metrics=("CIDEr-D",), use_java=False)[0]["CIDEr-D"]
    constant = best_constant_cider(references, {s["raw"] for im in data[:TRAIN_IMAGES] for s in im["sentences"]})
    assert learned > 3 * constant and learned > constant + 2, (learned, constant)

    capsys.readouterr()
    totals_file = tmp_path / "scores.json"
    assert main(["evaluate-caption", "--generations", str(generations), "--references", str(root / "dataset_coco.json"),
                 "--split", "val", "--out", str(totals_file)]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals == json.loads(totals_file.read_text())
    assert totals["images"] == IMAGES - TRAIN_IMAGES and totals["CIDEr-D"] > 3 * constant
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"} <= set(totals)
    per_image = read_jsonl(tmp_path / "scores.per_image.jsonl")
    assert sorted(row["image"] for row in per_image) == sorted(references)
    assert np.mean([row["CIDEr-D"] for row in per_image]) == pytest.approx(totals["CIDEr-D"], abs=1e-4)


def test_generate_is_sharded_resumable_and_counts_images_without_features(caption_inputs, untrained_generator,
                                                                          tmp_path):
    captions = write_jsonl(tmp_path / "caps.jsonl", [
        {"id": "1", "image": "img3.jpg", "caption": "x"}, {"id": "2", "image": "img3.jpg", "caption": "y"},
        {"id": "3", "image": "val2014/img5.jpg", "caption": "x"}, {"id": "4", "image": "absent.jpg", "caption": "x"},
        {"id": "5", "image": "img7.jpg", "caption": "x"}, "{broken"])
    out = tmp_path / "gen"
    assert generate(caption_inputs, untrained_generator, out, "--captions", str(captions), "--shard-size", "2",
                    "--beam-size", "2", "--max-new-tokens", "6") == 0
    rows = list(iter_output_jsonl(out, GENERATIONS_FILE))
    assert [r["image"] for r in rows] == ["img3.jpg", "img5.jpg", "img7.jpg"]
    assert all(set(r) == {"id", "image", "text", "score"} and r["score"] < 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3 and summary["failure_reasons"] == {"image_not_in_features": 1, "malformed_json": 1}

    again = tmp_path / "gen-recomputed"
    assert generate(caption_inputs, untrained_generator, again, "--captions", str(captions), "--shard-size", "2",
                    "--beam-size", "2", "--max-new-tokens", "6", "--no-cache") == 0
    assert list(iter_output_jsonl(again, GENERATIONS_FILE)) == rows  # the cache changes nothing
    before = (out / "shards" / "00000" / GENERATIONS_FILE).stat().st_mtime_ns
    assert generate(caption_inputs, untrained_generator, out, "--captions", str(captions), "--shard-size", "2",
                    "--beam-size", "2", "--max-new-tokens", "6") == 0
    assert (out / "shards" / "00000" / GENERATIONS_FILE).stat().st_mtime_ns == before  # committed: skipped


def test_generate_refuses_a_model_not_fine_tuned_for_generation(caption_inputs, tmp_path, capsys):
    assert generate(caption_inputs, caption_inputs / "pretrained", tmp_path / "gen") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("unimo-pipe: error:") and "not fine-tuned for generation" in error
    assert len(error.splitlines()) == 1


def test_evaluate_caption_without_java_counts_what_it_leaves_out(caption_inputs, tmp_path, capsys, monkeypatch,
                                                                 caplog):
    generations = write_jsonl(tmp_path / "gen.jsonl", [
        {"image": "img0.jpg", "text": "a red circle on the table"}, {"image": "img1.jpg", "text": "the circle is blue"},
        {"image": "img2.jpg", "text": "a green square"}, {"image": "img3.jpg"}, "{broken"])
    references = write_jsonl(tmp_path / "refs.jsonl", [
        {"id": "1", "image": "val2014/img0.jpg", "caption": "a red circle on the table"},
        {"id": "2", "image": "img0.jpg", "caption": "the circle is red"},
        {"id": "3", "image": "img1.jpg", "caption": "the circle is blue"},
        {"id": "4", "image": "img2.jpg", "caption": " "}, {"id": "5", "image": "other.jpg", "caption": "x"}])
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    capsys.readouterr()
    assert main(["evaluate-caption", "--generations", str(generations), "--references", str(references)]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals["images"] == 2 and "METEOR" not in totals and totals["tokenization"].startswith("python")
    assert totals["BLEU-1"] == pytest.approx(1.0) and totals["ROUGE-L"] == pytest.approx(1.0)
    assert totals["left_out"] == {"malformed_row": 1, "malformed_json": 1, "no_references": 1,
                                  "missing_caption": 1, "image_not_in_features": 1}
    assert any("no Java runtime" in r.getMessage() for r in caplog.records)


def test_evaluate_caption_with_no_usable_reference_is_one_line(caption_inputs, tmp_path, capsys):
    generations = write_jsonl(tmp_path / "gen.jsonl", [{"image": "img0.jpg", "text": "a red circle"}])
    references = write_jsonl(tmp_path / "refs.jsonl", [{"id": "1", "image": "img9.jpg", "caption": "x"}])
    assert main(["evaluate-caption", "--generations", str(generations), "--references", str(references)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no usable caption" in error


def test_caption_finetune_resume_reproduces_the_uninterrupted_losses(caption_inputs, tmp_path, interrupted_at_step):
    def finetune(out):
        return main(["finetune-caption", "--model", str(caption_inputs / "pretrained"), "--captions",
                     str(caption_inputs / "dataset_coco.json"), "--features", str(caption_inputs / "feats"),
                     "--tokenizer", str(caption_inputs / "tok"), "--out", str(out), "--batch-size", "8", "--workers",
                     "0", "--steps", "6", "--checkpoint-every", "3", "--log-every", "1", "--warmup-steps", "2",
                     "--eval-images", "4", "--max-new-tokens", "4", "--no-java"])

    assert finetune(tmp_path / "whole") == 0
    with interrupted_at_step(4):
        assert finetune(tmp_path / "resumed") == 130
    assert not (tmp_path / "resumed" / "model").exists()
    assert finetune(tmp_path / "resumed") == 0
    whole = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), a["step"]
    assert (tmp_path / "resumed" / "model" / "generation.json").is_file()
