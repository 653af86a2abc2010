from __future__ import annotations

import pytest
import torch

from tests.pipeline.test_training_data import shards, tokenizer  # noqa: F401  (fixtures)
from unimo_pipe.models.pretraining import ObjectiveWeights, UnimoPretraining, _group
from unimo_pipe.models.unified import UnifiedModel, tiny_encoder
from unimo_pipe.pipeline.training_data import Collator, Examples, PairDataset, Sampling


def test_group_pads_scores_by_owner():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    owners = torch.tensor([1, 0, 1, 1])
    padded, mask = _group([(scores, owners)], 3)
    assert padded.tolist() == [[2.0, 0, 0], [1.0, 3.0, 4.0], [0, 0, 0]]
    assert mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]


def test_every_objective_runs_and_trains_on_a_real_batch(shards, tokenizer):  # noqa: F811
    examples = Examples(shards, "pair", tokenizer=tokenizer)
    dataset = PairDataset(examples, sampling=Sampling(positives=1, negatives=3, retrieved_images=1, retrieved_texts=1))
    batch = Collator(tokenizer).pairs([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model = UnifiedModel(tiny_encoder(len(tokenizer)), region_dim=8)
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    pretraining = UnimoPretraining(model, vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
                                   special_ids=specials, in_batch_negatives=True, soft_label_classes=5)
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
    examples = Examples(shards, "pair", tokenizer=tokenizer)
    dataset = PairDataset(examples, sampling=Sampling(positives=1, negatives=3, retrieved_images=1, retrieved_texts=1))
    batch = Collator(tokenizer).pairs([dataset[i] for i in range(4)])
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = UnifiedModel(tiny_encoder(len(tokenizer), hidden=64), region_dim=8)
        pretraining = UnimoPretraining(model, vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id,
                                       special_ids=[tokenizer.pad_token_id], soft_label_classes=5).cuda()
        if compiled:
            model.compile()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = pretraining(batch, torch.Generator().manual_seed(0), ObjectiveWeights())["loss"]
        loss.backward()
        assert model.region_feature.weight.grad is not None
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 0.05 * abs(losses[0]) + 1e-3
