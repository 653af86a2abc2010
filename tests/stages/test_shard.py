from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter
from unimo_pipe.pipeline.formats import load_manifest
from unimo_pipe.pipeline.jsonl import write_json_atomic
from unimo_pipe.pipeline.runner import shard_dir


def fake_stage_output(out: Path, stage: str, file_name: str, rows: list[dict]) -> Path:
    """A finished stage folder as the runner leaves it, written directly."""
    shard = shard_dir(out, 0)
    shard.mkdir(parents=True)
    write_jsonl(shard / file_name, rows)
    (shard / "stats.json").write_text("{}")
    write_json_atomic(out / "stage.json", {"stage": stage, "config_hash": "test"})
    write_json_atomic(out / "summary.json", {"stage": stage, "complete": True})
    return out


def fake_retrieval_output(out: Path, results: dict[str, tuple[list, list]], *, view: bool = False) -> Path:
    """A finished retrieve folder: retrieval.npz written by the stage's own writer, its corpus in text_emb
    (one row per distinct sentence text)."""
    from unimo_pipe.pipeline.embedding_store import write_embedding_shard
    from unimo_pipe.stages.retrieve import _write_results

    fake_stage_output(out, "retrieve", "unused.jsonl", [])
    corpus_rows: dict[str, dict] = {}
    for _, found in results.values():
        for hit in found:
            corpus_rows.setdefault(hit["text"], {"id": hit["id"], "text": hit["text"]})
    rows = {text: index for index, text in enumerate(corpus_rows)}
    with_rows = {pair: (images, [{**hit, "row": rows[hit["text"]]} for hit in texts])
                 for pair, (images, texts) in results.items()}
    k = max([1] + [len(side) for pair in results.values() for side in pair])
    _write_results(shard_dir(out, 0), list(with_rows), list(with_rows.values()), k, view)
    corpus = fake_stage_output(out / "text_emb", "embed-text", "unused.jsonl", [])
    write_embedding_shard(shard_dir(corpus, 0), list(corpus_rows.values()), np.ones((len(corpus_rows), 2)))
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
    retrieval = fake_retrieval_output(tmp_path / "ret", {
        "p1": ([{"id": "b.jpg", "score": 0.98}], [{"text": "dogs like sofas", "id": "c:1", "score": 0.97}]),
        "p2": ([], [])})
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
    assert first["retrieved_images"] == [{"id": "b.jpg", "score": 0.98}]
    assert first["retrieved_texts"] == [{"text": "dogs like sofas", "score": 0.97}]
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


def test_retrieved_items_come_from_retrieval_npz_without_the_jsonl_view(tmp_path, inputs):
    # The fixture's retrieve output has only retrieval.npz (as `retrieve --no-jsonl-view` leaves it).
    assert not list((inputs["retrieval"] / "shards").rglob("retrieval.jsonl"))
    out = run_shard(tmp_path, inputs)
    first = json.loads((out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()[0])
    assert first["retrieved_texts"] == [{"text": "dogs like sofas", "score": 0.97}]
    assert "pairs_without_retrieval" not in json.loads((out / "summary.json").read_text())["counters"]


def test_a_bad_augment_row_is_counted_with_its_file_and_line(tmp_path, inputs, caplog):
    augment_file = inputs["augment"] / "shards" / "00000" / "augment.jsonl"
    augment_file.write_text(augment_file.read_text() + '{"id": "p2", "negatives": [\n["not", "a", "row"]\n'
                            '{"id": "p2", "negatives": "not a list"}\n{"id": "p2", "positives": [{"txt": "x"}]}\n')
    out = run_shard(tmp_path, inputs)
    problems = json.loads((out / "summary.json").read_text())["input_problems"]
    assert problems["count"] == 4
    assert problems["reasons"] == {"malformed_json": 1, "malformed_row": 1, "malformed_negatives": 1,
                                   "malformed_positives": 1}
    assert json.loads((out / "summary.json").read_text())["failed"] == 1  # only the image missing from features
    assert problems["examples"][0]["where"] == f"{augment_file}:2"
    assert "4 bad rows in side inputs" in caplog.text


def test_a_bad_augment_row_stops_a_strict_run(tmp_path, inputs, capsys):
    augment_file = inputs["augment"] / "shards" / "00000" / "augment.jsonl"
    augment_file.write_text(augment_file.read_text() + "{broken\n")
    with pytest.raises(AssertionError):
        run_shard(tmp_path, inputs, "--strict")
    assert f"{augment_file}:2: malformed_json" in capsys.readouterr().err


def test_an_output_of_another_stage_is_refused_in_one_line(tmp_path, inputs, capsys):
    wrong = fake_stage_output(tmp_path / "pairs-out", "import-pairs", "pairs.jsonl", [])
    with pytest.raises(AssertionError):
        run_shard(tmp_path, {**inputs, "augment": wrong})
    err = capsys.readouterr().err
    assert f"--augment {wrong} is output of `import-pairs`: pass the --out folder of a `unimo-pipe augment` run" in err
    with pytest.raises(AssertionError):
        run_shard(tmp_path, {**inputs, "retrieval": inputs["augment"]})
    assert "is output of `augment`: pass the --out folder of a `unimo-pipe retrieve` run" in capsys.readouterr().err


def test_an_image_name_two_stored_images_share_is_a_counted_failure(tmp_path, inputs):
    features = feature_store(tmp_path / "feats2", ["val/a.jpg", "test/a.jpg", "b.jpg"])
    pairs = write_jsonl(tmp_path / "pairs2.jsonl", [{"id": "p1", "image": "a.jpg", "caption": "a dog"},
                                                    {"id": "p2", "image": "b.jpg", "caption": "a cat"}])
    out = run_shard(tmp_path, {**inputs, "pairs": pairs, "features": features})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failure_reasons"] == {"ambiguous_image": 1}
    stats = json.loads((out / "shards" / "00000" / "stats.json").read_text())
    assert "matches several images" in stats["failure_examples"][0]["detail"]


def test_pairs_naming_jpg_find_features_imported_from_npz(tmp_path, inputs):
    source = tmp_path / "npz"
    source.mkdir()
    for name in ("a", "b"):
        np.savez(source / f"{name}.npz", features=np.ones((3, 4), np.float32),
                 norm_bb=np.tile([0.1, 0.2, 0.5, 0.6, 0.4, 0.4], (3, 1)).astype(np.float32))
    assert main(["import-features", "--source", str(source), "--out", str(tmp_path / "imported")]) == 0
    out = run_shard(tmp_path, {**inputs, "features": tmp_path / "imported"})
    rows = [json.loads(line) for line in (out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["id"], r["image"]) for r in rows] == [("p1", "a.npz"), ("p2", "b.npz")]


def test_sentences_whose_ids_repeat_across_corpora_are_joined_by_their_row(tmp_path, inputs):
    # Two corpus files with one stem give both first lines the id "corpus:1": the row tells them apart.
    retrieval = fake_retrieval_output(tmp_path / "ret2", {
        "p1": ([], [{"text": "a cat on a mat", "id": "corpus:1", "score": 0.99},
                    {"text": "a dog on a sofa", "id": "corpus:1", "score": 0.98}])})
    out = run_shard(tmp_path, {**inputs, "retrieval": retrieval})
    first = json.loads((out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()[0])
    assert first["retrieved_texts"] == [{"text": "a cat on a mat", "score": 0.99},
                                        {"text": "a dog on a sofa", "score": 0.98}]


def test_an_older_retrieve_output_without_rows_is_joined_by_unique_ids(tmp_path, inputs):
    npz = inputs["retrieval"] / "shards" / "00000" / "retrieval.npz"
    with np.load(npz) as data:
        arrays = {name: data[name] for name in data.files if name != "text_rows"}
    np.savez(npz, **arrays)
    out = run_shard(tmp_path, inputs)
    first = json.loads((out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()[0])
    assert first["retrieved_texts"] == [{"text": "dogs like sofas", "score": 0.97}]


def test_a_damaged_retrieve_output_is_one_clear_error(tmp_path, inputs, capsys):
    npz = inputs["retrieval"] / "shards" / "00000" / "retrieval.npz"
    npz.write_bytes(npz.read_bytes()[:40])
    with pytest.raises(AssertionError):
        run_shard(tmp_path, inputs)
    assert f"{npz} is unreadable" in capsys.readouterr().err


def test_outputs_made_from_other_pairs_are_named_in_a_warning(tmp_path, inputs, caplog):
    others = write_jsonl(tmp_path / "others.jsonl", [{"id": "q1", "image": "a.jpg", "caption": "a dog"}])
    run_shard(tmp_path, {**inputs, "pairs": others})
    assert "none of the 1 pairs is in --augment" in caplog.text
    assert "none of the 1 pairs is in --retrieval" in caplog.text


def test_retrieved_items_below_the_minimum_scores_or_past_the_top_k_are_left_out(tmp_path, inputs):
    retrieval = fake_retrieval_output(tmp_path / "ret3", {
        "p1": ([{"id": "b.jpg", "score": 0.8}, {"id": "c.jpg", "score": 0.3}],
               [{"text": "dogs like sofas", "id": "c:1", "score": 0.7}, {"text": "a sofa", "id": "c:2", "score": 0.6},
                {"text": "a field", "id": "c:3", "score": 0.1}]),
        "p2": ([], [])})
    out = run_shard(tmp_path, {**inputs, "retrieval": retrieval}, "--min-retrieved-image-score", "0.5",
                    "--min-retrieved-text-score", "0.65", "--max-retrieved", "2")
    first = json.loads((out / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()[0])
    assert first["retrieved_images"] == [{"id": "b.jpg", "score": 0.8}]
    assert first["retrieved_texts"] == [{"text": "dogs like sofas", "score": 0.7}]  # "a field" is past the top 2
    assert json.loads((out / "summary.json").read_text())["counters"]["retrieved_below_min_score"] == 2
    options = load_manifest(out)["options"]
    assert (options["min_retrieved_image_score"], options["min_retrieved_text_score"]) == (0.5, 0.65)
    unguarded = run_shard(tmp_path / "paper", {**inputs, "retrieval": retrieval}, "--min-retrieved-image-score",
                          "-1", "--min-retrieved-text-score", "-1")  # UNIMO's setting: every retrieved item
    first = json.loads((unguarded / "shards" / "00000" / "pairs.jsonl").read_text().splitlines()[0])
    assert len(first["retrieved_images"]) == 2 and len(first["retrieved_texts"]) == 3
