"""UNIMO's pretraining objectives as tensor functions: CMCL, language masking, visual masking.

CMCL (shared/MISSION.md): for a pair (V, W), with d = cosine of the [IMG] and [CLS] representations,
    L = -log( sum_{X+ u X_I u X_T} exp(d/tau) / sum_{X- u X+ u X_I u X_T} exp(d/tau) )
where X+ holds the pair itself and its positives, X- its hard negatives, X_I retrieved images paired with
the original text, and X_T retrieved texts paired with the original image. Callers gather, per pair, the
scores of its "positive side" (X+ u X_I u X_T) and of its negatives X- into padded matrices with masks;
in-batch negatives are simply more columns of the negative matrix (off by default: the paper's formula).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_scores(image_vectors: torch.Tensor, text_vectors: torch.Tensor) -> torch.Tensor:
    """d(V, W) row by row: cosine of matching rows."""
    return F.cosine_similarity(image_vectors.float(), text_vectors.float(), dim=-1)


def cmcl_loss(positive_scores: torch.Tensor, positive_mask: torch.Tensor, negative_scores: torch.Tensor,
              negative_mask: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """Mean CMCL loss over pairs. Scores (B, P) and (B, N); masks mark real entries (each row needs a positive)."""
    if not bool(positive_mask.any(dim=1).all()):
        raise ValueError("every pair needs at least one positive score (the pair itself)")
    blocked = torch.finfo(torch.float32).min
    positive = torch.where(positive_mask, positive_scores.float() / temperature, blocked)
    negative = torch.where(negative_mask, negative_scores.float() / temperature, blocked)
    numerator = torch.logsumexp(positive, dim=1)
    denominator = torch.logsumexp(torch.cat([positive, negative], dim=1), dim=1)
    return (denominator - numerator).mean()


def span_mask(input_ids: torch.Tensor, special: torch.Tensor, *, mask_id: int, vocab_size: int,
              rate: float = 0.15, max_span: int = 3, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional masking: spans (lengths uniform in 1..max_span) until `rate` of the real tokens, then
    80% [MASK], 10% a random token, 10% unchanged. Returns (masked ids, labels with -100 elsewhere)."""
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    for row in range(input_ids.shape[0]):
        candidates = (~special[row]).nonzero().flatten()
        target = max(1, round(rate * len(candidates))) if len(candidates) else 0
        chosen = _spans(candidates, target, max_span, generator)
        labels[row, chosen] = input_ids[row, chosen]
        roll = torch.rand(len(chosen), generator=generator)
        masked[row, chosen[roll < 0.8]] = mask_id
        random_positions = chosen[(roll >= 0.8) & (roll < 0.9)]
        masked[row, random_positions] = torch.randint(vocab_size, (len(random_positions),), generator=generator)
    return masked, labels


def _spans(candidates: torch.Tensor, target: int, max_span: int, generator) -> torch.Tensor:
    chosen: set[int] = set()
    positions = candidates.tolist()
    while len(chosen) < target and positions:
        start = int(torch.randint(len(positions), (1,), generator=generator))
        length = int(torch.randint(1, max_span + 1, (1,), generator=generator))
        for p in positions[start : start + length]:
            if len(chosen) < target:
                chosen.add(p)
    return torch.tensor(sorted(chosen), dtype=torch.long)


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


def seq2seq_attention(target: torch.Tensor) -> torch.Tensor:
    """(L, L) boolean: may row i attend to column j? Source tokens see every source token (bidirectional);
    target tokens see every source token and the target tokens up to themselves (causal)."""
    length = len(target)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    sees_source = (~target).unsqueeze(0).expand(length, length)
    sees_target = target.unsqueeze(0) & target.unsqueeze(1) & causal
    return sees_source | sees_target


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (R, 4) xyxy boxes (normalised or pixels)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-9)


def region_mask(boxes: torch.Tensor, valid: torch.Tensor, *, rate: float = 0.15, overlap: float = 0.3,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """UNIMO's visual masking for one image: `rate` of the regions, plus every region overlapping a masked
    one with IoU > `overlap` (so the answer cannot be copied from a near-identical box)."""
    count = int(valid.sum())
    mask = torch.zeros(len(boxes), dtype=torch.bool)
    if count == 0:
        return mask
    chosen = torch.randperm(count, generator=generator)[: max(1, round(rate * count))]
    mask[chosen] = True
    overlaps = (box_iou(boxes[:count].float()) > overlap)[mask[:count]].any(dim=0)
    mask[:count] |= overlaps
    return mask


def masked_region_losses(predicted_features: torch.Tensor, target_features: torch.Tensor,
                         predicted_logits: torch.Tensor, target_distribution: torch.Tensor,
                         masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature regression (mean squared error) and KL(target || predicted) over the masked regions."""
    if not bool(masked.any()):
        zero = predicted_features.sum() * 0
        return zero, zero
    regression = F.mse_loss(predicted_features[masked].float(), target_features[masked].float())
    log_predicted = F.log_softmax(predicted_logits[masked].float(), dim=-1)
    kl = F.kl_div(log_predicted, target_distribution[masked].float(), reduction="batchmean")
    return regression, kl
