from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl
from tests.stages.test_shard import fake_retrieval_output, feature_store, run_shard
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.training_data import (
    BatchPlan,
    Collator,
    Examples,
    ImageDataset,
    PairDataset,
    Sampling,
    TextDataset,
    make_loader,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer

    texts = ["a dog on a sofa", "a cat on a mat", "the first sentence is here", "dogs like sofas"] * 5
    return AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), texts))


@pytest.fixture
def shards(tmp_path):
    names = [f"img{i}.jpg" for i in range(30)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": f"p{i}", "image": names[i], "caption": " ".join(["word"] * (3 + i % 7))} for i in range(30)])
    augment = tmp_path / "aug"
    from tests.stages.test_shard import fake_stage_output

    fake_stage_output(augment, "augment", "augment.jsonl", [
        {"id": f"p{i}", "positives": [{"text": f"positive {j} of {i}"} for j in range(3)],
         "negatives": [{"text": f"negative {j} of {i}", "kind": "replace_object"} for j in range(6)]}
        for i in range(30)])
    retrieval = fake_retrieval_output(tmp_path / "ret", {
        f"p{i}": ([{"id": names[(i + 1) % 30], "score": 0.95}], [{"text": "related text", "id": "c:1", "score": 0.94}])
        for i in range(30)})
    features = feature_store(tmp_path / "feats", names, boxes=10)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"corpus sentence number {i} here\n" for i in range(20)))
    inputs = {"pairs": pairs, "augment": augment, "retrieval": retrieval, "features": features, "corpus": corpus}
    return run_shard(tmp_path, inputs, "shard_size=7")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_complete_subsets(world_size):
    sizes = np.arange(100) % 13
    plans = [BatchPlan(sizes, batch_size=4, rank=r, world_size=world_size, seed=3) for r in range(world_size)]
    seen = [i for plan in plans for batch in plan.batches(epoch=0) for i in batch]
    assert sorted(seen) == list(range(100))
    assert plans[0].batches(0) == BatchPlan(sizes, batch_size=4, rank=0, world_size=world_size, seed=3).batches(0)
    assert plans[0].batches(0) != plans[0].batches(1)  # a new permutation each epoch


def test_resume_by_step_gives_the_same_following_batches():
    plan = BatchPlan(np.arange(57) % 9, batch_size=5, seed=1)
    full = plan.batches(epoch=2)
    assert plan.batches(epoch=2, start_step=4) == full[4:]
    plan.set_position(2, 4)
    assert list(plan) == full[4:] and len(plan) == len(full) - 4


def test_bucketing_keeps_sizes_close_within_a_batch():
    sizes = np.random.default_rng(0).integers(1, 200, 1000)
    plan = BatchPlan(sizes, batch_size=16, seed=0, bucket_batches=50)
    spreads = [sizes[b].max() - sizes[b].min() for b in plan.batches(0) if len(b) == 16]
    unbucketed = [sizes[b].max() - sizes[b].min() for b in np.array_split(np.random.default_rng(1).permutation(1000),
                                                                              1000 // 16)]
    assert np.mean(spreads) < np.mean(unbucketed) / 5


def test_pair_batches_have_padded_tensors_masks_and_owners(shards, tokenizer):
    examples = Examples(shards, "pair", max_regions=11)
    assert len(examples) == 30 and examples.box_counts().max() == 11
    dataset = PairDataset(examples, sampling=Sampling(positives=2, negatives=4, retrieved_images=1,
                                                      retrieved_texts=1), seed=5)
    batch = Collator(tokenizer).pairs([dataset[i] for i in (0, 5, 9)])
    assert batch["text_ids"].shape[0] == 3 and batch["text_mask"].dtype == torch.bool
    assert batch["region_features"].dtype == torch.float16 and batch["region_features"].shape[1:] == (11, 8)
    assert batch["region_boxes"].shape[-1] == 7
    torch.testing.assert_close(batch["region_boxes"][0, 0, 6].float(), torch.tensor(0.16), atol=1e-3, rtol=0)
    assert batch["region_mask"][0].sum() == 10 and batch["region_mask"][1].sum() == 11  # 10+i boxes, capped
    assert batch["positives_ids"].shape[0] == 6 and batch["positives_owner"].tolist() == [0, 0, 1, 1, 2, 2]
    assert batch["negatives_ids"].shape[0] == 12 and batch["retrieved_features"].shape[0] == 3
    assert batch["region_soft_labels"].shape == (3, 11, 5)  # the detector's class distributions, padded
    lengths = batch["text_mask"].sum(1)
    assert (batch["text_ids"][0, lengths[0]:] == tokenizer.pad_token_id).all()
    assert dataset[3]["negatives"] == dataset[3]["negatives"]  # sampling is a function of (seed, epoch, index)
    dataset.epoch = 1
    assert any(dataset[i]["negatives"] != PairDataset(examples, seed=5)[i]["negatives"] for i in range(10))


def test_text_and_image_batches(shards, tokenizer):
    texts = TextDataset(Examples(shards, "text"))
    batch = Collator(tokenizer).texts([texts[i] for i in range(4)])
    assert batch["text_ids"].shape[0] == 4 and batch["text_mask"].any(1).all()
    images = ImageDataset(Examples(shards, "image"))
    batch = Collator.images([images[i] for i in range(3)])
    assert batch["region_features"].shape == (3, 20, 8)  # img0, img1, img10: 10, 11 and 20 boxes
    assert batch["region_mask"].sum().item() == 10 + 11 + 20


def test_loader_with_worker_processes_covers_each_rank_once(shards, tokenizer):
    examples = Examples(shards, "pair")
    seen = []
    for rank in range(2):
        plan = BatchPlan(examples.text_lengths + examples.box_counts(), batch_size=4, rank=rank, world_size=2)
        loader = make_loader(PairDataset(examples), plan, Collator(tokenizer).pairs, workers=2)
        seen += [i for batch in loader for i in batch["index"]]
    assert sorted(seen) == list(range(30))


def test_empty_shards_give_empty_batches(tmp_path, tokenizer):
    empty = write_jsonl(tmp_path / "none.jsonl", [])
    out = tmp_path / "shards"
    from unimo_pipe.pipeline.cli import main

    assert main(["shard", "--pairs", str(empty), "--out", str(out)]) == 0
    examples = Examples(out, "pair")
    assert len(examples) == 0 and BatchPlan(examples.text_lengths, batch_size=4).batches(0) == []


def test_a_shard_file_truncated_or_edited_after_the_manifest_is_refused(shards):
    path = shards / "shards" / "00000" / "pairs.jsonl"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3].rsplit(b"\n", 1)[0] + b"\n")  # whole lines, a third left
    with pytest.raises(UserError, match="does not match its manifest entry .* it was truncated or changed"):
        Examples(shards, "pair")
    path.write_bytes(original.replace(b"word word", b"ward word", 1))  # the same size, other bytes
    with pytest.raises(UserError, match="does not match its manifest entry"):
        Examples(shards, "pair")
    path.write_bytes(original)
    assert len(Examples(shards, "pair")) == 30


def test_garbled_region_features_are_one_clear_error(shards):
    import lmdb

    examples = Examples(shards, "pair")
    key = examples.keys[0]
    env = lmdb.open(str(next(examples.feature_dir.glob("feat_th*"))), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(key.encode(), b"\xc1\xc1 not msgpack")
    env.close()
    with pytest.raises(UserError, match=f"region features of '{key}' in .* are damaged"):
        examples.regions(key)


def test_images_are_found_in_the_feature_store_as_every_stage_finds_them(shards):
    examples = Examples(shards, "pair")
    assert examples.regions("val2014/img3.jpg")["features"].shape[0] == 13  # by file name
    assert examples.regions("img4.npz")["features"].shape[0] == 14  # by stem
    with pytest.raises(UserError, match="nope.jpg is not in .*: train with the feature store"):
        examples.regions("nope.jpg")
