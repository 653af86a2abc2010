from __future__ import annotations

import math

import pytest
import torch

from unimo_pipe.models.objectives import (
    box_iou,
    cmcl_loss,
    hardest_negative_triplet_loss,
    ipot_plan,
    masked_region_losses,
    region_masks,
    seq2seq_attention,
    seq2seq_targets,
    span_mask,
    word_region_distance,
)


def cmcl_by_the_formula(positives: list[list[float]], negatives: list[list[float]], tau: float) -> torch.Tensor:
    """The paper's equation, one pair at a time, with Python loops."""
    total = 0.0
    for pos, neg in zip(positives, negatives, strict=True):
        numerator = sum(math.exp(d / tau) for d in pos)
        denominator = numerator + sum(math.exp(d / tau) for d in neg)
        total += -math.log(numerator / denominator)
    return torch.tensor(total / len(positives))


def padded(rows: list[list[float]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        scores[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return scores, mask


def test_cmcl_matches_the_formula_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    positives = [torch.rand(n, generator=generator).mul(2).sub(1).tolist() for n in (1, 4, 2)]
    negatives = [torch.rand(n, generator=generator).mul(2).sub(1).tolist() for n in (5, 0, 3)]
    tau = 0.2
    pos, pos_mask = padded(positives, 4)
    neg, neg_mask = padded(negatives, 5)
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    loss = cmcl_loss(pos, pos_mask, neg, neg_mask, temperature=tau)
    torch.testing.assert_close(loss, cmcl_by_the_formula(positives, negatives, tau), rtol=1e-5, atol=1e-6)
    loss.backward()
    # By the formula: dL/d(pos) = (softmax over all - softmax over positives) / tau / B,
    # dL/d(neg) = softmax over all / tau / B.
    for i, (p, n) in enumerate(zip(positives, negatives, strict=True)):
        all_scores = torch.tensor(p + n) / tau
        over_all = torch.softmax(all_scores, 0)
        over_pos = torch.softmax(torch.tensor(p) / tau, 0)
        expected_pos = (over_all[: len(p)] - over_pos) / tau / len(positives)
        expected_neg = over_all[len(p) :] / tau / len(positives)
        torch.testing.assert_close(pos.grad[i, : len(p)], expected_pos, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(neg.grad[i, : len(n)], expected_neg, rtol=1e-4, atol=1e-6)
        assert (pos.grad[i, len(p) :] == 0).all() and (neg.grad[i, len(n) :] == 0).all()


def test_cmcl_needs_a_positive_and_prefers_aligned_pairs():
    with pytest.raises(ValueError, match="at least one positive"):
        cmcl_loss(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, 1),
                  torch.ones(1, 1, dtype=torch.bool))
    ones = torch.ones(1, 1, dtype=torch.bool)
    good = cmcl_loss(torch.tensor([[0.9]]), ones, torch.tensor([[0.1]]), ones)
    bad = cmcl_loss(torch.tensor([[0.1]]), ones, torch.tensor([[0.9]]), ones)
    assert good < bad


def test_span_masking_rates_and_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 40), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    masked, labels = span_mask(ids, special, mask_id=4, vocab_size=1000, generator=generator)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens never masked
    assert chosen.sum(1).eq(round(0.15 * 38)).all()
    assert (labels[chosen] == ids[chosen]).all()
    as_mask = (masked[chosen] == 4).float().mean()
    unchanged = (masked[chosen] == ids[chosen]).float().mean()
    assert 0.75 < as_mask < 0.85 and 0.07 < unchanged < 0.14
    assert (masked[~chosen] == ids[~chosen]).all()
    runs = [sum(1 for _ in group) for row in chosen for group in _runs(row.tolist())]
    assert max(runs) >= 2  # spans, not only single tokens


def _runs(values):
    run = []
    for v in values:
        if v:
            run.append(v)
        elif run:
            yield run
            run = []
    if run:
        yield run


def test_seq2seq_targets_and_attention_are_causal_over_targets_only():
    generator = torch.Generator().manual_seed(1)
    target = seq2seq_targets(40, generator=generator)
    assert 10 <= int(target.sum()) <= 13
    allowed = seq2seq_attention(target)
    assert allowed.shape == (40, 40)
    source = (~target).nonzero().flatten()
    targets = target.nonzero().flatten()
    assert allowed[source][:, source].all()  # bidirectional within the source
    assert not allowed[source][:, targets].any()  # the source never sees the target
    for i in targets.tolist():
        for j in targets.tolist():
            assert bool(allowed[i, j]) == (j <= i)  # causal within the target
        assert allowed[i, source].all()


def region_mask(boxes, valid, *, generator):
    return region_masks(boxes[None], valid[None], generator=generator)[0]


def test_region_masking_rate_and_overlap_rule():
    generator = torch.Generator().manual_seed(0)
    grid = torch.tensor([[x, y, x + 0.09, y + 0.09] for x in torch.arange(0, 1, 0.1) for y in torch.arange(0, 1, 0.1)])
    valid = torch.ones(100, dtype=torch.bool)
    rates = [region_mask(grid, valid, generator=generator).float().mean() for _ in range(20)]
    assert all(abs(r - 0.15) < 1e-6 for r in rates)  # disjoint boxes: exactly 15%
    twins = torch.cat([grid[:20], grid[:20] + 0.005])  # every box has a near-copy (IoU > 0.3)
    mask = region_mask(twins, torch.ones(40, dtype=torch.bool), generator=generator)
    assert torch.equal(mask[:20], mask[20:])  # a masked box always takes its twin along
    iou = box_iou(twins)
    assert iou[0, 20] > 0.3 and iou[0, 1] == 0
    padded_valid = torch.tensor([True] * 10 + [False] * 5)
    assert not region_mask(grid[:15], padded_valid, generator=generator)[10:].any()


def test_masked_region_losses():
    target = torch.randn(2, 5, 8)
    distribution = torch.softmax(torch.randn(2, 5, 10), -1)
    masked = torch.zeros(2, 5, dtype=torch.bool)
    masked[0, 1] = masked[1, 3] = True
    regression, kl = masked_region_losses(target.clone(), target, distribution.log(), distribution, masked)
    assert regression.item() == pytest.approx(0, abs=1e-7) and kl.item() == pytest.approx(0, abs=1e-6)
    regression, kl = masked_region_losses(torch.zeros_like(target), target, torch.zeros(2, 5, 10), distribution,
                                          masked)
    assert regression > 0 and kl > 0
    none = torch.zeros_like(masked)
    assert masked_region_losses(target, target, distribution, distribution, none)[0].item() == 0
    # the weighted forms equal the plain losses over the masked rows
    predicted, logits = torch.randn(2, 5, 8), torch.randn(2, 5, 10)
    regression, kl = masked_region_losses(predicted, target, logits, distribution, masked)
    torch.testing.assert_close(regression, torch.nn.functional.mse_loss(predicted[masked], target[masked]))
    expected = torch.nn.functional.kl_div(logits[masked].log_softmax(-1), distribution[masked], reduction="batchmean")
    torch.testing.assert_close(kl, expected)


def test_span_masking_counts_per_row_in_a_ragged_batch():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 1000, (6, 30), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    real_counts = [30, 1, 0, 7, 20, 14]
    for row, count in enumerate(real_counts):
        special[row, count:] = True  # padding and specials look the same to the masker
    _, labels = span_mask(ids, special, mask_id=4, vocab_size=1000, generator=generator)
    chosen = labels != -100
    assert chosen.sum(1).tolist() == [round(0.15 * 30), 1, 0, 1, 3, 2]
    assert not (chosen & special).any()


def test_batched_region_masks_follow_each_image():
    generator = torch.Generator().manual_seed(0)
    grid = torch.tensor([[x, y, x + 0.09, y + 0.09] for x in torch.arange(0, 1, 0.1) for y in torch.arange(0, 1, 0.1)])
    boxes = grid[None].repeat(3, 1, 1)
    valid = torch.zeros(3, 100, dtype=torch.bool)
    valid[0] = True
    valid[1, 20:60] = True  # not a prefix
    masks = region_masks(boxes, valid, generator=generator)
    assert masks.sum(1).tolist() == [15, 6, 0]  # disjoint boxes: exactly 15% of each image's regions
    assert not (masks & ~valid).any()


def test_ipot_plan_has_uniform_marginals_and_finds_the_cheap_matching():
    generator = torch.Generator().manual_seed(0)
    n = 6
    permutation = torch.randperm(n, generator=generator)
    cost = torch.ones(2, n + 2, n + 1)
    cost[:, torch.arange(n), permutation] = 0.0  # one zero-cost matching among the real rows and columns
    rows = torch.tensor([[True] * n + [False] * 2] * 2)
    columns = torch.tensor([[True] * n + [False]] * 2)
    plan = ipot_plan(cost, rows, columns, beta=0.1, iterations=100)
    torch.testing.assert_close(plan.sum(2)[:, :n], torch.full((2, n), 1 / n), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(1)[:, :n], torch.full((2, n), 1 / n), atol=1e-4, rtol=0)
    assert plan[:, n:].abs().sum() == 0 and plan[:, :, n].abs().sum() == 0  # padding gets no mass
    assert plan[:, torch.arange(n), permutation].sum(1).min() > 0.95


def test_word_region_distance_is_smaller_for_aligned_sets():
    generator = torch.Generator().manual_seed(1)
    regions = torch.randn(1, 5, 16, generator=generator)
    words = regions[:, torch.randperm(5, generator=generator)] + 0.05 * torch.randn(1, 5, 16, generator=generator)
    unrelated = torch.randn(1, 5, 16, generator=generator)
    mask = torch.ones(1, 5, dtype=torch.bool)
    aligned = word_region_distance(words, mask, regions, mask)
    assert aligned < 0.1 < word_region_distance(unrelated, mask, regions, mask)


def triplet_by_loops(scores: list[list[float]], margin: float, extra: list[list[float]]) -> float:
    """VSE++'s sum of hinges at the hardest negatives, one pair at a time."""
    n, total = len(scores), 0.0
    for i in range(n):
        wrong_captions = [scores[i][j] for j in range(n) if j != i] + extra[i]
        wrong_images = [scores[j][i] for j in range(n) if j != i]
        total += max(0.0, margin + max(wrong_captions, default=-1e9) - scores[i][i])
        total += max(0.0, margin + max(wrong_images, default=-1e9) - scores[i][i])
    return total / n


def test_hardest_negative_triplet_loss_matches_loops_and_its_gradient_hits_the_hardest():
    torch.manual_seed(0)
    scores = torch.rand(4, 4, requires_grad=True)
    extra_rows = [[0.95], [], [0.1, 0.2], []]
    extra, mask = padded(extra_rows, 2)
    loss = hardest_negative_triplet_loss(scores, margin=0.2, caption_negatives=extra, caption_negative_mask=mask)
    assert loss.item() == pytest.approx(triplet_by_loops(scores.tolist(), 0.2, extra_rows), abs=1e-6)
    loss.backward()
    assert (scores.grad != 0).sum() <= 4 * 3  # only matches and hardest negatives get a gradient
    aligned = torch.eye(3) * 0.9
    assert hardest_negative_triplet_loss(aligned, margin=0.2).item() == 0.0  # every match wins by >= margin
    assert hardest_negative_triplet_loss(torch.zeros(1, 1), margin=0.2).item() == 0.0  # no negative at all
