from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.pipeline.test_training_data import shards, tokenizer  # noqa: F401  (fixtures)
from unimo_pipe.models.objectives import cmcl_loss, region_classification_loss
from unimo_pipe.models.pretraining import ObjectiveWeights, UnimoPretraining, _group
from unimo_pipe.models.unified import UnifiedModel, tiny_encoder
from unimo_pipe.pipeline.training_data import Collator, Examples, PairDataset, Sampling


def test_group_pads_scores_by_owner():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    owners = torch.tensor([1, 0, 1, 1])
    padded, mask = _group([(scores, owners)], 3)
    assert padded.tolist() == [[2.0, 0, 0], [1.0, 3.0, 4.0], [0, 0, 0]]
    assert mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]


def tiny_setup(shards, tokenizer, sampling: Sampling, *, hidden: int = 32, **options):  # noqa: F811
    """A batch of 4 pairs from the test shards, and a tiny model with its objectives."""
    dataset = PairDataset(Examples(shards, "pair"), sampling=sampling)
    batch = Collator(tokenizer).pairs([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model = UnifiedModel(tiny_encoder(len(tokenizer), hidden=hidden), region_dim=8)
    pretraining = UnimoPretraining(model, vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
                                   soft_label_classes=5, **options)
    return batch, model, pretraining


def test_uniter_and_unicoder_objectives_run_and_reach_their_heads(shards, tokenizer):  # noqa: F811
    batch, model, pretraining = tiny_setup(shards, tokenizer, Sampling(1, 2, 0, 0),
                                           special_ids=[tokenizer.pad_token_id])
    weights = ObjectiveWeights(cmcl=0, language=0, visual=0, matching=1, classification=1, alignment=0.5)
    losses = pretraining(batch, torch.Generator().manual_seed(0), weights)
    assert set(losses) == {"loss", "loss_itm", "loss_mrm", "loss_moc", "loss_wra"}
    torch.testing.assert_close(losses["loss"], losses["loss_itm"] + losses["loss_moc"] + 0.5 * losses["loss_wra"])
    assert torch.isfinite(losses["loss_wra"])
    losses["loss"].backward()
    assert pretraining.match_head.weight.grad.abs().sum() > 0 and pretraining.class_head.weight.grad.abs().sum() > 0
    assert pretraining.lm_head.weight.grad is None


def test_region_classification_targets_the_detectors_top_class():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]])
    soft = torch.tensor([[[0.1, 0.7, 0.2], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]]])
    masked = torch.tensor([[True, True, False]])
    expected = F.cross_entropy(logits[0, :2], torch.tensor([1, 1]))  # both masked regions' top class is 1
    torch.testing.assert_close(region_classification_loss(logits, soft, masked), expected)


def test_every_objective_runs_and_trains_on_a_real_batch(shards, tokenizer):  # noqa: F811
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    batch, model, pretraining = tiny_setup(shards, tokenizer, Sampling(1, 3, 1, 1), special_ids=specials,
                                           in_batch_negatives=True)
    assert batch["region_soft_labels"].shape[-1] == 5
    generator = torch.Generator().manual_seed(0)
    losses = pretraining(batch, generator, ObjectiveWeights())
    assert {"loss", "loss_cmcl", "loss_mrm"} <= set(losses) and ("loss_mlm" in losses or "loss_seq2seq" in losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.region_feature.weight.grad is not None and model.image_token.grad is not None
    seq2seq = pretraining.language(batch, torch.Generator().manual_seed(1), seq2seq=True)
    mlm = pretraining.language(batch, torch.Generator().manual_seed(1), seq2seq=False)
    assert torch.isfinite(seq2seq) and torch.isfinite(mlm)
    pretraining.zero_grad()
    pretraining.visual(batch, torch.Generator().manual_seed(2)).backward()
    assert pretraining.class_head.weight.grad.abs().sum() > 0  # the KL to the soft labels trains the class head


@pytest.mark.gpu
def test_compiled_bf16_step_on_gpu_matches_eager(shards, tokenizer):  # noqa: F811
    """The GPU path of `pretrain --compile`: inductor-compiled layers under bf16 autocast give the eager
    losses (within bf16 noise) and keep training."""
    losses = []
    for compiled in (False, True):
        batch, model, pretraining = tiny_setup(shards, tokenizer, Sampling(1, 3, 1, 1), hidden=64,
                                               special_ids=[tokenizer.pad_token_id])
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        pretraining.cuda()
        if compiled:
            model.compile()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = pretraining(batch, torch.Generator().manual_seed(0), ObjectiveWeights())["loss"]
        loss.backward()
        assert model.region_feature.weight.grad is not None
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0]) + 1e-3


def test_group_with_a_known_width_gives_the_same_loss():
    scores = torch.tensor([0.5, 0.2, 0.9, 0.1])
    owners = torch.tensor([1, 0, 1, 1])
    measured = _group([(scores, owners)], 3)
    bounded = _group([(scores, owners)], 3, width=6)
    assert bounded[0].shape == (3, 6) and torch.equal(bounded[0][:, :3], measured[0])
    positive = (torch.ones(3, 1), torch.ones(3, 1, dtype=torch.bool))
    torch.testing.assert_close(cmcl_loss(*positive, *measured), cmcl_loss(*positive, *bounded))
    empty, empty_mask = _group([], 3, device=torch.device("cpu"))
    assert empty.shape == (3, 1) and not empty_mask.any()


def test_one_task_weights_draw_tasks_by_weight_and_keep_proportions_within_a_task():
    from collections import Counter

    from unimo_pipe.models.pretraining import one_task_weights

    weights = ObjectiveWeights(cmcl=2.0, language=1.0, visual=0.5, classification=0.5, matching=0.0, alignment=0.0)
    generator = torch.Generator().manual_seed(0)
    drawn = Counter()
    for _ in range(4000):
        step = one_task_weights(weights, generator)
        on = {name for name in ("cmcl", "language", "visual", "classification", "matching", "alignment")
              if getattr(step, name)}
        drawn[frozenset(on)] += 1
        if "visual" in on:
            assert step.visual == step.classification == 0.5 / 1.0  # the regions task's two halves
        else:
            assert len(on) == 1 and getattr(step, next(iter(on))) == 1.0
    assert set(drawn) == {frozenset({"cmcl"}), frozenset({"language"}), frozenset({"visual", "classification"})}
    assert abs(drawn[frozenset({"cmcl"})] / 4000 - 0.5) < 0.03
    assert abs(drawn[frozenset({"language"})] / 4000 - 0.25) < 0.03


def test_every_loss_is_weighted_by_its_named_objective_and_an_unnamed_loss_is_refused():
    from dataclasses import fields

    from unimo_pipe.models.pretraining import LOSS_WEIGHTS, weighted_total

    assert set(LOSS_WEIGHTS.values()) == {f.name for f in fields(ObjectiveWeights)}
    weights = ObjectiveWeights(cmcl=2.0, language=3.0, visual=5.0, classification=7.0)
    losses = {"loss_cmcl": torch.tensor(1.0), "loss_text_mlm": torch.tensor(1.0), "loss_image_moc": torch.tensor(1.0)}
    assert weighted_total(losses, weights).item() == 2.0 + 3.0 + 7.0
    with pytest.raises(KeyError, match="loss_image_cmcl"):  # a suffix alone must not pick the weight
        weighted_total({"loss_image_cmcl": torch.tensor(1.0)}, weights)


@pytest.mark.skipif(not torch.amp.is_autocast_available("cpu"), reason="this torch has no CPU autocast")
def test_every_objective_trains_under_bf16_autocast_on_cpu(shards, tokenizer):  # noqa: F811
    """The dtype mix of a GPU step (bf16 activations, fp32 weights and losses), without a GPU."""
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    weights = ObjectiveWeights(matching=1.0, classification=1.0, alignment=0.5)
    for retrieval_loss in ("cmcl", "triplet"):
        batch, model, pretraining = tiny_setup(shards, tokenizer, Sampling(1, 3, 1, 1), special_ids=specials,
                                               in_batch_negatives=True, retrieval_loss=retrieval_loss)
        seen = set()
        for seed in range(2):  # seed 0 draws seq2seq, seed 1 MLM
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = pretraining(batch, torch.Generator().manual_seed(seed), weights)
            assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
            losses["loss"].backward()
            seen |= set(losses)
        assert {f"loss_{retrieval_loss}", "loss_mlm", "loss_seq2seq", "loss_mrm", "loss_moc", "loss_itm",
                "loss_wra"} <= seen
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in pretraining.parameters())
        assert model.region_feature.weight.grad is not None
