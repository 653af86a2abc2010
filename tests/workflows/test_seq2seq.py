from __future__ import annotations

import json
import random

import pytest

from tests.conftest import read_jsonl, write_jsonl
from tests.workflows.conftest import save_tiny_pretrained
from unimo_pipe.pipeline.cli import main

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "sun", "moon"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
CODE = dict(zip(WORDS, NUMBERS, strict=True))


def _examples(count: int, seed: int) -> list[dict]:
    """"say W1 W2 ..." -> each word's code word, in order: the target needs the source, word by word."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        rows.append({"id": f"{seed}-{i}", "source": "say " + " ".join(words),
                     "target": " ".join(CODE[w] for w in words)})
    return rows


@pytest.fixture(scope="module")
def text_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    train = _examples(300, seed=0)
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "dev.jsonl", _examples(40, seed=1))
    save_tiny_pretrained(root, [r["source"] + " " + r["target"] for r in train] * 2)
    return root


@pytest.fixture(scope="module")
def untrained_text_generator(text_inputs):
    from unimo_pipe.models.generator import GenerationSetup, Generator
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.models.unified import UnifiedModel

    tokenizer = load_tokenizer(str(text_inputs / "tok"))
    setup = GenerationSetup.for_tokenizer(tokenizer, task="text", max_source_tokens=6, max_target_tokens=16)
    Generator(UnifiedModel.from_pretrained(text_inputs / "pretrained"), setup).save_pretrained(text_inputs / "gen")
    return text_inputs / "gen"


@pytest.mark.slow  # about 40 s on CPU
def test_seq2seq_finetune_learns_a_task_that_needs_the_source_and_evaluates_alone(text_inputs, tmp_path, capsys):
    from unimo_pipe.models.text_metrics import text_scores

    root, out = text_inputs, tmp_path / "run"
    assert main(["finetune-seq2seq", "--model", str(root / "pretrained"), "--train", str(root / "train.jsonl"),
                 "--eval", str(root / "dev.jsonl"), "--tokenizer", str(root / "tok"), "--out", str(out),
                 "--batch-size", "16", "--workers", "0", "--steps", "1000", "--lr", "3e-3", "--warmup-steps", "20",
                 "--log-every", "100", "--eval-every", "500", "--max-source-tokens", "12"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert {"val_rouge_l", "val_bleu"} <= set(rows[4]) and rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    dev = read_jsonl(root / "dev.jsonl")
    references = [r["target"] for r in dev]
    constant = max(text_scores([c] * len(dev), references)[0]["ROUGE-L"] for c in {r["target"] for r in dev})
    scores = json.loads((out / "seq2seq_scores.json").read_text())
    assert scores["ROUGE-L"] > constant + 40 and scores["BLEU"] > 50, (scores, constant)

    capsys.readouterr()
    assert main(["evaluate-seq2seq", "--model", str(out / "model"), "--data", str(root / "dev.jsonl"), "--tokenizer",
                 str(root / "tok"), "--beam-size", "3", "--out", str(tmp_path / "dev.json")]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals["examples"] == 40 and totals["ROUGE-L"] > constant + 40 and totals["left_out"] == {}
    per_example = read_jsonl(tmp_path / "dev.per_example.jsonl")
    assert [r["id"] for r in per_example] == [r["id"] for r in dev]
    assert sum(r["text"] == r["target"] for r in per_example) > len(dev) / 2


def test_evaluate_seq2seq_counts_bad_rows_and_truncated_sources(text_inputs, untrained_text_generator, tmp_path,
                                                                 capsys):
    data = tmp_path / "data.tsv"
    data.write_text("source\ttarget\nsay red cat\tone four\nsay " + "moon " * 20 + "\teight\n\tmissing source\n"
                    "say dog\n")
    capsys.readouterr()
    assert main(["evaluate-seq2seq", "--model", str(untrained_text_generator), "--data", str(data), "--tokenizer",
                 str(text_inputs / "tok"), "--max-new-tokens", "4"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals["examples"] == 2 and totals["truncated_sources"] == 1
    assert totals["left_out"] == {"missing_field": 1, "malformed_line": 1}
    assert 0 <= totals["ROUGE-L"] <= 100 and 0 <= totals["BLEU"] <= 100


@pytest.mark.parametrize("model", ["pretrained", "caption"])
def test_evaluate_seq2seq_refuses_a_model_that_is_not_a_text_generator(text_inputs, tmp_path, capsys, model):
    folder = text_inputs / model
    if model == "caption":
        from unimo_pipe.models.generator import GenerationSetup, Generator
        from unimo_pipe.models.unified import UnifiedModel

        setup = GenerationSetup("caption", 0, 2, 1, (0, 1), max_source_tokens=2, max_target_tokens=8)
        Generator(UnifiedModel.from_pretrained(text_inputs / "pretrained"), setup).save_pretrained(folder)
    capsys.readouterr()
    assert main(["evaluate-seq2seq", "--model", str(folder), "--data", str(text_inputs / "dev.jsonl"),
                 "--tokenizer", str(text_inputs / "tok")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert ("not fine-tuned for generation" if model == "pretrained" else "captions images") in error


def test_generate_from_sources_is_sharded_and_counts_bad_and_truncated_sources(text_inputs, untrained_text_generator,
                                                                             tmp_path, capsys):
    from unimo_pipe.pipeline.formats import GENERATIONS_FILE
    from unimo_pipe.pipeline.outputs import iter_output_jsonl

    sources = write_jsonl(tmp_path / "sources.jsonl", [
        {"id": "a", "source": "say red cat"}, {"id": "b", "source": "say " + "moon " * 20}, {"id": "c"},
        {"id": "d", "source": "say dog"}, "{broken"])
    out = tmp_path / "gen"
    args = ["generate", "--model", str(untrained_text_generator), "--tokenizer", str(text_inputs / "tok"),
            "--device", "cpu", "--max-new-tokens", "4", "--shard-size", "2"]
    assert main([*args, "--sources", str(sources), "--beam-size", "2", "--out", str(out)]) == 0
    rows = list(iter_output_jsonl(out, GENERATIONS_FILE))
    assert [(r["id"], r["source"]) for r in rows] == [("a", "say red cat"), ("b", "say " + " ".join(["moon"] * 20)),
                                                      ("d", "say dog")]
    assert all(set(r) == {"id", "source", "text", "score"} for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure_reasons"] == {"missing_source": 1, "malformed_json": 1}
    assert summary["counters"] == {"sources_truncated": 1}
    import numpy as np

    from unimo_pipe.pipeline.feature_store import RegionFeatureWriter

    with RegionFeatureWriter(tmp_path / "feats") as writer:
        writer.add("x.jpg", {"features": np.ones((2, 16)), "norm_bb": np.full((2, 6), 0.5), "conf": np.ones(2)})
    capsys.readouterr()
    assert main([*args, "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "wrong")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "text generator: give it --sources" in error
