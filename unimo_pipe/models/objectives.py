"""UNIMO's pretraining objectives as tensor functions: CMCL, language masking, visual masking.

CMCL (UNIMO, Li et al. 2021): for a pair (V, W), with d = cosine of the [IMG] and [CLS] representations,
    L = -log( sum_{X+ u X_I u X_T} exp(d/tau) / sum_{X- u X+ u X_I u X_T} exp(d/tau) )
where X+ holds the pair itself and its positives, X- its hard negatives, X_I retrieved images paired with
the original text, and X_T retrieved texts paired with the original image. Callers gather, per pair, the
scores of its "positive side" (X+ u X_I u X_T) and of its negatives X- into padded matrices with masks;
in-batch negatives are simply more columns of the negative matrix (off by default: the paper's formula).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cmcl_loss(positive_scores: torch.Tensor, positive_mask: torch.Tensor, negative_scores: torch.Tensor,
              negative_mask: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """Mean CMCL loss over pairs. Scores (B, P) and (B, N); masks mark real entries (each row needs a positive)."""
    if not positive_mask.is_cuda and not bool(positive_mask.any(dim=1).all()):  # on a GPU this check would sync
        raise ValueError("every pair needs at least one positive score (the pair itself)")
    blocked = torch.finfo(torch.float32).min
    positive = torch.where(positive_mask, positive_scores.float() / temperature, blocked)
    negative = torch.where(negative_mask, negative_scores.float() / temperature, blocked)
    numerator = torch.logsumexp(positive, dim=1)
    denominator = torch.logsumexp(torch.cat([positive, negative], dim=1), dim=1)
    return (denominator - numerator).mean()


def hardest_negative_triplet_loss(scores: torch.Tensor, *, margin: float = 0.2,
                                  caption_negatives: torch.Tensor | None = None,
                                  caption_negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++'s retrieval loss (Faghri et al. 2018), mean over pairs. `scores` (B, B): image i against
    caption j, matched pairs on the diagonal. Each image's hardest wrong caption and each caption's hardest
    wrong image must score `margin` below the match, or pay the difference. `caption_negatives` (B, N)
    with its mask: more wrong captions per image (e.g. scene-graph hard negatives), competing with the
    batch's other captions."""
    blocked = torch.finfo(torch.float32).min
    scores = scores.float()
    matched = scores.diagonal()
    wrong = torch.where(torch.eye(len(scores), dtype=torch.bool, device=scores.device), blocked, scores)
    wrong_captions = wrong
    if caption_negatives is not None:
        extra = torch.where(caption_negative_mask, caption_negatives.float(), blocked)
        wrong_captions = torch.cat([wrong, extra], dim=1)
    caption_cost = (margin + wrong_captions.max(dim=1).values - matched).clamp(min=0)
    image_cost = (margin + wrong.max(dim=0).values - matched).clamp(min=0)
    return (caption_cost + image_cost).mean()


def host_to(device: torch.device, values: torch.Tensor) -> torch.Tensor:
    """A CPU tensor on `device`, copied without making the host wait for the GPU's queued work."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_on(device: torch.device, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) numbers drawn from a CPU generator (so runs are reproducible on any device) on `device`."""
    return host_to(device, torch.rand(shape, generator=generator))


def _counts_at_rate(counts: torch.Tensor, rate: float) -> torch.Tensor:
    """max(1, round(rate * n)) for rows with n > 0, else 0."""
    return torch.where(counts > 0, (rate * counts.double()).round().clamp(min=1), 0).long()


def span_mask(input_ids: torch.Tensor, special: torch.Tensor, *, mask_id: int, vocab_size: int,
              rate: float = 0.15, max_span: int = 3, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional masking: spans (lengths uniform in 1..max_span) until `rate` of the real tokens, then
    80% [MASK], 10% a random token, 10% unchanged. Returns (masked ids, labels with -100 elsewhere).

    Batched tensor operations on the ids' device (no per-row Python loop, no GPU sync): each row draws
    as many spans as its target count over its real tokens, in order; the first `target` distinct
    tokens they cover are masked (the last span cut short), and if overlapping spans cover too few,
    random real tokens make up the count, so every row masks exactly round(rate * real tokens).
    """
    device, (batch, length) = input_ids.device, input_ids.shape
    real = ~special.bool()
    counts = real.sum(1)
    targets = _counts_at_rate(counts, rate)
    spans = max(1, round(rate * length))  # every row's target at most; no GPU sync to learn the real maximum
    # candidate index -> token position: the row's real tokens first, in order
    positions = torch.argsort((~real).long() * length + torch.arange(length, device=device), dim=1)
    starts = (random_on(device, (batch, spans), generator) * counts[:, None]).long()
    lengths = 1 + (random_on(device, (batch, spans), generator) * max_span).long()
    offsets = torch.arange(max_span, device=device)
    covered = starts[:, :, None] + offsets  # (B, spans, max_span) candidate indices, in drawing order
    usable = (offsets < lengths[:, :, None]) & (covered < counts[:, None, None])
    order = torch.arange(spans * max_span, device=device, dtype=torch.float).expand(batch, -1)
    first_draw = torch.full((batch, length + 1), float("inf"), device=device)
    first_draw.scatter_reduce_(1, torch.where(usable, covered, length).flatten(1), order, reduce="amin")
    first_draw = first_draw[:, :length]
    fill = spans * max_span + random_on(device, (batch, length), generator)  # after every span, random order
    rank = torch.where(first_draw.isinf(), fill, first_draw)
    rank = rank.masked_fill(torch.arange(length, device=device) >= counts[:, None], float("inf"))
    chosen_candidates = rank.argsort(dim=1).argsort(dim=1) < targets[:, None]
    chosen = torch.zeros_like(real).scatter(1, positions, chosen_candidates)
    roll = random_on(device, (batch, length), generator)
    random_tokens = (random_on(device, (batch, length), generator) * vocab_size).long()
    masked = torch.where(chosen & (roll < 0.8), mask_id, input_ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_tokens, masked)
    return masked, torch.where(chosen, input_ids, -100)


def seq2seq_targets(length: int, *, rate: float = 0.25, max_fragment: int = 4,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean (length,) marking target fragments (lengths uniform in 1..max_fragment) until `rate` of tokens."""
    target = torch.zeros(length, dtype=torch.bool)
    goal = max(1, round(rate * length))
    while int(target.sum()) < goal:
        size = int(torch.randint(1, max_fragment + 1, (1,), generator=generator))
        start = int(torch.randint(0, max(1, length - size + 1), (1,), generator=generator))
        target[start : start + size] = True
    return target


def seq2seq_attention(target: torch.Tensor, *, prefix: int = 0) -> torch.Tensor:
    """(L, L) boolean: may row i attend to column j? Source tokens see every source token (bidirectional);
    target tokens see every source token and the target tokens up to themselves (causal). `target` (T,)
    marks the text's target tokens; `prefix` more source positions come before it (an image's [IMG] and
    regions), so L = prefix + T. The one seq2seq pattern: pretraining's fragments and generation's
    whole-target fine-tuning and decoding use it alike."""
    target = torch.cat([torch.zeros(prefix, dtype=torch.bool, device=target.device), target.bool()])
    length = len(target)
    causal = torch.ones(length, length, dtype=torch.bool, device=target.device).tril()
    sees_source = (~target).unsqueeze(0).expand(length, length)
    sees_target = target.unsqueeze(0) & target.unsqueeze(1) & causal
    return sees_source | sees_target


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (..., R, 4) xyxy boxes (normalised or pixels): (..., R, R)."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    top_left = torch.maximum(boxes[..., :, None, :2], boxes[..., None, :, :2])
    bottom_right = torch.minimum(boxes[..., :, None, 2:], boxes[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area[..., :, None] + area[..., None, :] - inter).clamp(min=1e-9)


def region_masks(boxes: torch.Tensor, valid: torch.Tensor, *, rate: float = 0.15, overlap: float = 0.3,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """UNIMO's visual masking for a batch of images, (B, R, 4) boxes and (B, R) valid regions: `rate` of
    each image's regions, plus every region overlapping a masked one with IoU > `overlap` (so the answer
    cannot be copied from a near-identical box). Tensor operations on the boxes' device."""
    targets = _counts_at_rate(valid.sum(1), rate)
    scores = random_on(boxes.device, tuple(valid.shape), generator).masked_fill(~valid, 2.0)
    chosen = scores.argsort(dim=1).argsort(dim=1) < targets[:, None]
    overlapping = ((box_iou(boxes.float()) > overlap) & chosen[:, :, None]).any(dim=1)
    return chosen | (overlapping & valid)


def _masked_mean(values: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean of per-region `values` (B, R) over the masked regions; 0 (with a gradient) if none is. A
    weighted sum rather than boolean indexing, which would make the host wait for the GPU."""
    weight = masked.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1)


def masked_feature_regression(predicted_features: torch.Tensor, target_features: torch.Tensor,
                              masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the masked regions' features."""
    return _masked_mean((predicted_features.float() - target_features.float()).pow(2).mean(-1), masked)


def masked_region_losses(predicted_features: torch.Tensor, target_features: torch.Tensor,
                         predicted_logits: torch.Tensor, target_distribution: torch.Tensor,
                         masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature regression (mean squared error) and KL(target || predicted) over the masked regions."""
    regression = masked_feature_regression(predicted_features, target_features, masked)
    target = target_distribution.float()
    log_predicted = F.log_softmax(predicted_logits.float(), dim=-1)
    kl = (torch.xlogy(target, target) - target * log_predicted).sum(-1)
    return regression, _masked_mean(kl, masked)


def region_classification_loss(predicted_logits: torch.Tensor, target_distribution: torch.Tensor,
                               masked: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the masked regions against the detector's most likely class (MOC / MRC)."""
    logits = predicted_logits.float()
    losses = F.cross_entropy(logits.flatten(0, 1), target_distribution.argmax(-1).flatten(), reduction="none")
    return _masked_mean(losses.view(logits.shape[:2]), masked)


@torch.no_grad()
def ipot_plan(cost: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, *, beta: float = 0.5,
              iterations: int = 50) -> torch.Tensor:
    """Optimal transport plans (B, N, M) between uniform distributions over each item's real rows
    (B, N) and columns (B, M) for `cost` (B, N, M), by the inexact proximal point method (IPOT, Xie et al.
    2020; UNITER's word-region alignment uses it). Padding gets no mass."""
    cost = cost.float()
    real = rows[:, :, None] & columns[:, None, :]
    row_count = rows.sum(1, keepdim=True).clamp(min=1).float()
    column_count = columns.sum(1, keepdim=True).clamp(min=1).float()
    kernel = torch.exp(-cost / beta) * real
    plan = real.float()
    sigma = columns.float() / column_count
    for _ in range(iterations):
        q = kernel * plan
        delta = rows.float() / (row_count * torch.bmm(q, sigma[:, :, None]).squeeze(2)).clamp(min=1e-30)
        sigma = columns.float() / (column_count * torch.bmm(q.transpose(1, 2), delta[:, :, None]).squeeze(2)
                                   ).clamp(min=1e-30)
        plan = delta[:, :, None] * q * sigma[:, None, :]
    return plan


def word_region_distance(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                         region_mask: torch.Tensor) -> torch.Tensor:
    """Per item, the optimal transport distance between its words' and its regions' states (cost: 1 -
    cosine), with the plan held fixed (gradients flow through the cost)."""
    cost = 1 - torch.bmm(F.normalize(words.float(), dim=-1), F.normalize(regions.float(), dim=-1).transpose(1, 2))
    plan = ipot_plan(cost.detach(), word_mask.bool(), region_mask.bool())
    return (cost * plan).sum((1, 2))
