from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import read_jsonl, write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter

COLOURS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
def labelled_inputs(tmp_path_factory):
    """8 images whose features encode a colour; per image, "a C thing" is "yes" for its own colour and "no"
    for another one, so the label needs the image and the text together. Plus a tiny saved model."""
    root = tmp_path_factory.mktemp("classify")
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((len(COLOURS), 16))
    rows = []
    with RegionFeatureWriter(root / "feats") as writer:
        for i in range(8):
            colour = i % len(COLOURS)
            n = 10 + i % 3
            writer.add(f"img{i}.jpg", {"features": basis[colour] + 0.1 * rng.standard_normal((n, 16)),
                                       "norm_bb": np.tile([0.1, 0.1, 0.6, 0.6, 0.5, 0.5], (n, 1)),
                                       "conf": np.ones(n)})
            for other in range(len(COLOURS)):
                rows.append({"image": f"img{i}.jpg", "text": f"a {COLOURS[other]} thing",
                             "label": "yes" if other == colour else "no"})
    write_jsonl(root / "train.jsonl", rows)
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

    build_tiny_tokenizer(root / "tok", [r["text"] for r in rows] * 3)
    tokenizer = load_tokenizer(str(root / "tok"), of="--tokenizer")
    torch.manual_seed(0)  # a fixed start: a tiny model from some random starts needs many more steps
    UnifiedModel(tiny_encoder(len(tokenizer), hidden=32), region_dim=16).save_pretrained(root / "pretrained")
    return root


def finetune(root, out, *extra):
    return main(["finetune-classifier", "--model", str(root / "pretrained"), "--train", str(root / "train.jsonl"),
                 "--features", str(root / "feats"), "--tokenizer", str(root / "tok"), "--out", str(out),
                 "--batch-size", "8", "--workers", "0", *extra])


def test_classifier_learns_a_task_that_needs_image_and_text_and_evaluates_alone(labelled_inputs, tmp_path,
                                                                                capsys):
    out = tmp_path / "run"
    assert finetune(labelled_inputs, out, "--steps", "500", "--lr", "3e-3", "--warmup-steps", "20",
                    "--log-every", "50") == 0
    scores = json.loads((out / "classification.json").read_text())
    assert scores["majority_class_accuracy"] == 0.75 and scores["examples"] == 32
    assert scores["accuracy"] >= 0.9
    rows = read_jsonl(out / "metrics.jsonl")
    assert {"loss", "loss_classification", "train_accuracy", "lr"} <= set(rows[0])
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert json.loads((out / "model" / "classifier.json").read_text())["labels"] == ["no", "yes"]

    held_out = read_jsonl(labelled_inputs / "train.jsonl") + [
        {"image": "img0.jpg", "text": "a red thing", "label": "maybe"},  # a class the model does not know
        {"image": "absent.jpg", "text": "a red thing", "label": "yes"}, {"image": "img1.jpg", "label": "no"}]
    data = write_jsonl(tmp_path / "held_out.jsonl", held_out)
    with data.open("a") as f:
        f.write("{not json\n")
    capsys.readouterr()
    assert main(["evaluate-classifier", "--model", str(out / "model"), "--data", str(data), "--features",
                 str(labelled_inputs / "feats"), "--tokenizer", str(labelled_inputs / "tok")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 33 and result["accuracy"] == round(scores["accuracy"] * 32 / 33, 4)
    assert result["left_out"] == {"malformed_json": 1, "missing_field": 1, "unknown_image": 1, "unknown_label": 1}


def test_classifier_resume_reproduces_the_uninterrupted_losses(labelled_inputs, tmp_path, interrupted_at_step):
    args = ["--steps", "6", "--checkpoint-every", "3", "--log-every", "1", "--warmup-steps", "2"]
    assert finetune(labelled_inputs, tmp_path / "whole", *args) == 0
    with interrupted_at_step(4):
        assert finetune(labelled_inputs, tmp_path / "resumed", *args) == 130
    assert finetune(labelled_inputs, tmp_path / "resumed", *args) == 0
    whole = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), a["step"]


def test_classifier_input_mistakes_are_one_clear_error(labelled_inputs, tmp_path, capsys):
    one_class = write_jsonl(tmp_path / "one.jsonl", [{"image": "img0.jpg", "text": "a red thing", "label": "yes"}])
    assert main(["finetune-classifier", "--model", str(labelled_inputs / "pretrained"), "--train", str(one_class),
                 "--features", str(labelled_inputs / "feats"), "--tokenizer", str(labelled_inputs / "tok"),
                 "--out", str(tmp_path / "a")]) == 2
    assert "single class ('yes')" in capsys.readouterr().err
    unusable = write_jsonl(tmp_path / "bad.jsonl", [{"image": "absent.jpg", "text": "x", "label": "yes"}])
    assert main(["finetune-classifier", "--model", str(labelled_inputs / "pretrained"), "--train", str(unusable),
                 "--features", str(labelled_inputs / "feats"), "--tokenizer", str(labelled_inputs / "tok"),
                 "--out", str(tmp_path / "b")]) == 2
    assert "no usable example (unknown_image: 1)" in capsys.readouterr().err
    assert main(["evaluate-classifier", "--model", str(labelled_inputs / "pretrained"), "--data",
                 str(labelled_inputs / "train.jsonl"), "--features", str(labelled_inputs / "feats"), "--tokenizer",
                 str(labelled_inputs / "tok")]) == 2
    assert "has no classifier.json" in capsys.readouterr().err


@pytest.mark.gpu
def test_classifier_trains_and_scores_in_bf16_on_gpu(labelled_inputs, tmp_path):
    out = tmp_path / "gpu"
    assert finetune(labelled_inputs, out, "--steps", "500", "--lr", "3e-3", "--warmup-steps", "20",
                    "--log-every", "50") == 0
    scores = json.loads((out / "classification.json").read_text())
    assert scores["examples"] == 32 and scores["accuracy"] > scores["majority_class_accuracy"]


def test_text_classification_from_a_glue_style_tsv(tmp_path, capsys):
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

    good, bad = ["good", "great", "lovely", "fun"], ["bad", "awful", "boring", "dull"]
    subjects = ["the film", "this movie", "the plot", "the acting", "the music"]
    rows = [(f"{s} was {w}", "1" if w in good else "0") for s in subjects for w in good + bad]
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    build_tiny_tokenizer(tmp_path / "tok", [t for t, _ in rows] * 3)
    torch.manual_seed(0)
    UnifiedModel(tiny_encoder(len(load_tokenizer(str(tmp_path / "tok"), of="--tokenizer")), hidden=32),
                 region_dim=16).save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "sst"
    assert main(["finetune-classifier", "--model", str(tmp_path / "pretrained"), "--train", str(train),
                 "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--batch-size", "8", "--workers", "0",
                 "--steps", "150", "--lr", "3e-3", "--warmup-steps", "10"]) == 0
    scores = json.loads((out / "classification.json").read_text())
    assert scores["examples"] == 40 and scores["majority_class_accuracy"] == 0.5 and scores["accuracy"] >= 0.9
    assert json.loads((out / "model" / "classifier.json").read_text()) == {"labels": ["0", "1"], "with_image": False}

    test = tmp_path / "test.tsv"
    test.write_text("sentence\tlabel\nthe film was great\t1\nthe plot was dull\t0\na broken line\n"
                    "the music was fun\tneutral\n")
    capsys.readouterr()
    assert main(["evaluate-classifier", "--model", str(out / "model"), "--data", str(test), "--tokenizer",
                 str(tmp_path / "tok")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 3 and result["left_out"] == {"malformed_line": 1, "unknown_label": 1}
    assert result["accuracy"] == round(2 / 3, 4)  # both known sentences right; the unknown label counts as wrong


def test_image_text_data_needs_features(labelled_inputs, tmp_path, capsys):
    assert main(["finetune-classifier", "--model", str(labelled_inputs / "pretrained"), "--train",
                 str(labelled_inputs / "train.jsonl"), "--tokenizer", str(labelled_inputs / "tok"), "--out",
                 str(tmp_path / "a")]) == 2
    assert "pairs texts with images: pass --features DIR" in capsys.readouterr().err


def test_a_classifier_run_that_stops_early_writes_no_model_and_resumes(labelled_inputs, tmp_path, monkeypatch,
                                                                        caplog):
    from tests.workflows.test_pretrain import assert_stopped_with_a_checkpoint, stop_during_step
    from unimo_pipe.workflows.classify import ClassifierRecipe

    out, args = tmp_path / "run", ["--steps", "4", "--checkpoint-every", "2", "--warmup-steps", "1"]
    with monkeypatch.context() as patch:
        stop_during_step(patch, ClassifierRecipe, 4, KeyboardInterrupt())
        assert finetune(labelled_inputs, out, *args) == 130
    assert_stopped_with_a_checkpoint(out, 2, caplog)
    assert finetune(labelled_inputs, out, *args) == 0
    assert (out / "model" / "classifier.json").is_file() and (out / "classification.json").is_file()


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"), reason="no CPU autocast in this torch")
def test_a_classifier_step_in_bf16_on_cpu(labelled_inputs, tmp_path):
    out = tmp_path / "bf16"
    assert finetune(labelled_inputs, out, "--steps", "2", "--warmup-steps", "1", "--log-every", "1",
                    "--precision", "bf16") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert json.loads((out / "classification.json").read_text())["examples"] == 32


@pytest.mark.slow  # trains a tiny model until it has learnt the task
def test_sts_b_style_regression_learns_a_similarity_and_evaluates_alone(tmp_path, capsys):
    """Sentence pairs scored 0-5 by the relation word of the second sentence; held out: other fillers."""
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

    relations = {"same": 5.0, "close": 3.75, "near": 2.5, "far": 1.25, "gone": 0.0}
    fillers = ["today", "here", "again", "now", "there", "still"]

    def tsv(path, used_fillers):
        lines = ["index\tsentence1\tsentence2\tscore"]
        for n, (s, r, f) in enumerate((s, r, f) for s in ("cat", "dog", "bird") for r in relations
                                      for f in used_fillers):
            lines.append(f"{n}\tthe {s} sat {f}\tthe {s} is {r}\t{relations[r]}")
        path.write_text("\n".join([*lines, "99\tthe cat sat\tthe cat is\tnot a number", ""]))
        return path

    train, dev = tsv(tmp_path / "train.tsv", fillers[:4]), tsv(tmp_path / "dev.tsv", fillers[4:])
    build_tiny_tokenizer(tmp_path / "tok", [train.read_text(), dev.read_text()] * 3)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    UnifiedModel(tiny_encoder(len(tokenizer), hidden=32), region_dim=16).save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "sts"
    assert main(["finetune-classifier", "--model", str(tmp_path / "pretrained"), "--train", str(train), "--eval",
                 str(dev), "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--regression", "--batch-size",
                 "16", "--workers", "0", "--steps", "300", "--lr", "3e-3", "--warmup-steps", "20",
                 "--log-every", "50"]) == 0
    scores = json.loads((out / "classification.json").read_text())
    assert scores["examples"] == 30 and scores["pearson"] > 90 and scores["spearman"] > 85, scores
    assert "loss_regression" in read_jsonl(out / "metrics.jsonl")[0]
    assert json.loads((out / "model" / "classifier.json").read_text())["regression"] is True
    capsys.readouterr()
    assert main(["evaluate-classifier", "--model", str(out / "model"), "--data", str(dev), "--tokenizer",
                 str(tmp_path / "tok")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pearson"] == pytest.approx(scores["pearson"], abs=0.5)
    assert result["left_out"] == {"non_numeric_label": 1}
