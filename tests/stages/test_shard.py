from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter
from unimo_pipe.pipeline.jsonl import write_json_atomic
from unimo_pipe.pipeline.runner import shard_dir
from unimo_pipe.pipeline.training_data import load_manifest


def fake_stage_output(out: Path, stage: str, file_name: str, rows: list[dict]) -> Path:
    """A finished stage folder as the runner leaves it, written directly."""
    shard = shard_dir(out, 0)
    shard.mkdir(parents=True)
    write_jsonl(shard / file_name, rows)
    (shard / "stats.json").write_text("{}")
    write_json_atomic(out / "stage.json", {"stage": stage, "config_hash": "test"})
    write_json_atomic(out / "summary.json", {"stage": stage, "complete": True})
    return out


def feature_store(root: Path, names: list[str], boxes: int = 12, dim: int = 8) -> Path:
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(root) as writer:
        for i, name in enumerate(names):
            n = boxes + i
            writer.add(name, {"features": rng.standard_normal((n, dim)),
                              "norm_bb": np.tile([0.1, 0.2, 0.5, 0.6, 0.4, 0.4], (n, 1)),
                              "conf": np.linspace(0.9, 0.2, n), "soft_labels": np.full((n, 5), 0.2)})
    return root


@pytest.fixture
def inputs(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "p1", "image": "val/a.jpg", "caption": "a dog on a sofa"},
        {"id": "p2", "image": "b.jpg", "caption": "a cat on a mat"},
        {"id": "p3", "image": "missing.jpg", "caption": "a horse in a field"},
    ])
    augment = fake_stage_output(tmp_path / "aug", "augment", "augment.jsonl", [
        {"id": "p1", "caption": "a dog on a sofa", "positives": [{"text": "a dog sits on a couch", "pivot": "de"}],
         "negatives": [{"text": f"a cat on a sofa {i}", "kind": "replace_object", "from": "dog", "to": "cat"}
                       for i in range(5)]}])
    retrieval = fake_stage_output(tmp_path / "ret", "retrieve", "retrieval.jsonl", [
        {"id": "p1", "images": [{"id": "b.jpg", "score": 0.8}], "texts": [{"text": "dogs like sofas", "id": "c:1",
                                                                           "score": 0.7}]},
        {"id": "p2", "images": [], "texts": []}])
    features = feature_store(tmp_path / "feats", ["a.jpg", "b.jpg", "c.jpg"])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the first sentence is here\nthe second one is longer than the first\n")
    return {"pairs": pairs, "augment": augment, "retrieval": retrieval, "features": features, "corpus": corpus}


def run_shard(tmp_path, inputs, *extra) -> Path:
    out = tmp_path / "shards"
    assert main(["shard", "--pairs", str(inputs["pairs"]), "--augment", str(inputs["augment"]), "--retrieval",
                 str(inputs["retrieval"]), "--image-features", str(inputs["features"]), "--text-corpus",
                 str(inputs["corpus"]), "--image-collection", str(inputs["features"]), "--out", str(out),
                 *extra]) == 0
    return out


def test_join_and_manifest(tmp_path, inputs):
    out = run_shard(tmp_path, inputs, "--max-negatives", "3")
    rows = [json.loads(line) for line in (out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2"]
    first = rows[0]
    assert first["image"] == "a.jpg"  # matched by file name to the feature store's key
    assert first["positives"] == ["a dog sits on a couch"] and len(first["negatives"]) == 3
    assert first["negatives"][0] == {"text": "a cat on a sofa 0", "kind": "replace_object"}
    assert first["retrieved_images"] == [{"id": "b.jpg", "score": 0.8}]
    assert first["retrieved_texts"] == [{"text": "dogs like sofas", "score": 0.7}]
    assert rows[1]["positives"] == [] and rows[1]["negatives"] == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure_reasons"] == {"image_not_in_features": 1}
    assert summary["counters"] == {"pairs_without_augmentation": 1}
    manifest = load_manifest(out, verify=True)
    assert manifest["totals"] == {"pair": 2, "text": 2, "image": 3} and manifest["schema_version"] == 1
    assert {f["kind"] for f in manifest["files"]} == {"pair", "text", "image"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])


def test_shards_are_deterministic(tmp_path, inputs):
    first = run_shard(tmp_path / "a", inputs, "shard_size=2")
    second = run_shard(tmp_path / "b", inputs, "shard_size=2")
    strip = lambda m: [(f["path"], f["records"], f["sha256"]) for f in m["files"]]  # noqa: E731
    assert strip(load_manifest(first)) == strip(load_manifest(second))
    assert len(load_manifest(first)["files"]) >= 3


def test_damaged_shards_and_manifests_are_named(tmp_path, inputs, capsys):
    out = run_shard(tmp_path, inputs)
    pairs_file = out / "shards" / "00000" / "pairs.jsonl"
    pairs_file.write_text(pairs_file.read_text().replace("dog", "cow"))
    with pytest.raises(UserError, match="pairs.jsonl does not match its checksum"):
        load_manifest(out, verify=True)
    assert main(["inspect", str(out), "--verify"]) == 2
    assert "does not match its checksum" in capsys.readouterr().err
    pairs_file.unlink()
    with pytest.raises(UserError, match="pairs.jsonl is listed in .* but missing"):
        load_manifest(out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(UserError, match="schema version 99, this unimo-pipe reads 1"):
        load_manifest(out)
    (out / "manifest.json").write_text('{"schema_version": ')
    with pytest.raises(UserError, match="manifest.json is corrupt"):
        load_manifest(out)
    with pytest.raises(UserError, match="no manifest"):
        load_manifest(tmp_path)


def test_inspect_prints_summary_and_examples(tmp_path, inputs, capsys):
    out = run_shard(tmp_path, inputs)
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "records: pair 2, text 2, image 3" in printed and '"id": "p1"' in printed
