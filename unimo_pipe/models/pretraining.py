"""UNIMO pretraining on a batch from pipeline/training_data.py: CMCL, language and visual learning.

- CMCL: images and texts are encoded separately by the same transformer; per pair, the positive side
  is d(V, W), d(V, positives), d(retrieved images, W) and d(V, retrieved texts); the negatives are
  d(V, hard negatives), plus the other pairs' captions when `in_batch_negatives` is on (off: the paper's
  formula).
- Language: bidirectional span masking or seq2seq (fragments generated left to right), chosen uniformly
  per step, on captions conditioned on their image.
- Visual: 15% of regions (plus IoU > 0.3 neighbours) zeroed; their features regressed and, where the
  store has soft labels, their class distributions matched (KL).

UNITER's and Unicoder-VL's objectives, off by default (UNIMO does not use them):
- Matching (UNITER's ITM, Unicoder-VL's VLM): the pair encoded jointly, its first text token classified
  as matched or not; mismatches are each image with another pair's caption and, when the shards have
  them, with one of its scene-graph hard negatives.
- Word-region alignment (UNITER's WRA), on the same joint passes: the optimal transport distance between
  a caption's word states and the image's region states (IPOT), pulled down for matched pairs and pushed up
  for mismatched ones.
- Region classification (Unicoder-VL's MOC, UNITER's MRC): masked regions classified as the detector's
  most likely class (cross-entropy), beside the KL to its whole distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unimo_pipe.models.objectives import (
    cmcl_loss,
    hardest_negative_triplet_loss,
    host_to,
    masked_feature_regression,
    masked_region_losses,
    region_classification_loss,
    region_masks,
    seq2seq_attention,
    seq2seq_targets,
    span_mask,
    word_region_distance,
)
from unimo_pipe.models.unified import UnifiedModel


@dataclass(frozen=True)
class ObjectiveWeights:
    cmcl: float = 1.0
    language: float = 1.0
    visual: float = 1.0
    matching: float = 0.0
    classification: float = 0.0
    alignment: float = 0.0


LOSS_WEIGHTS = {  # each loss `forward` can return -> the ObjectiveWeights field that weighs it
    "loss_cmcl": "cmcl", "loss_triplet": "cmcl",
    "loss_mlm": "language", "loss_seq2seq": "language", "loss_text_mlm": "language", "loss_text_seq2seq": "language",
    "loss_mrm": "visual", "loss_image_mrm": "visual",
    "loss_moc": "classification", "loss_image_moc": "classification",
    "loss_itm": "matching",
    "loss_wra": "alignment",
}


def weighted_total(losses: dict[str, torch.Tensor], weights: ObjectiveWeights) -> torch.Tensor:
    """The training loss: each loss times its objective's weight (LOSS_WEIGHTS). A loss missing from the
    table is a KeyError, not a guess from its name."""
    return sum(getattr(weights, LOSS_WEIGHTS[name]) * value for name, value in losses.items())


_TASKS = {"cmcl": ("cmcl",), "language": ("language",), "regions": ("visual", "classification"),
          "matching": ("matching", "alignment")}  # objectives that share a task (and its forward passes)


def one_task_weights(weights: ObjectiveWeights, generator: torch.Generator) -> ObjectiveWeights:
    """UNITER's schedule: one task per batch, drawn with probability proportional to its weight. The drawn
    task's objectives keep their proportions, scaled to sum to 1 (the draw already carries the weight);
    every other objective is off."""
    totals = {task: sum(getattr(weights, name) for name in names) for task, names in _TASKS.items()}
    tasks = [task for task, total in totals.items() if total > 0]
    drawn = tasks[int(torch.multinomial(torch.tensor([totals[t] for t in tasks]), 1, generator=generator))]
    return ObjectiveWeights(**{name: getattr(weights, name) / totals[drawn] if name in _TASKS[drawn] else 0.0
                               for names in _TASKS.values() for name in names})


class UnimoPretraining(nn.Module):
    def __init__(self, model: UnifiedModel, *, vocab_size: int, mask_id: int, special_ids: list[int],
                 soft_label_classes: int, temperature: float = 0.07, in_batch_negatives: bool = False,
                 retrieval_loss: str = "cmcl", margin: float = 0.2):
        """`soft_label_classes`: the width of the feature store's soft labels (the detector's classes), which
        the region classification head predicts; 0 for a store without soft labels (no such head)."""
        super().__init__()
        hidden = model.hidden_size
        self.model = model
        self.lm_head = nn.Linear(hidden, vocab_size)
        self.feature_head = nn.Linear(hidden, model.region_dim)
        self.class_head = nn.Linear(hidden, soft_label_classes) if soft_label_classes else None
        self.match_head = nn.Linear(hidden, 2)
        self.vocab_size, self.mask_id = vocab_size, mask_id
        self.register_buffer("special_ids", torch.tensor(special_ids, dtype=torch.long), persistent=False)
        self.temperature, self.in_batch_negatives = temperature, in_batch_negatives
        self.retrieval_loss, self.margin = retrieval_loss, margin

    # -- CMCL --

    def encode_texts(self, ids, mask) -> torch.Tensor:
        return self.model(text_ids=ids, text_mask=mask)["text"]

    def encode_images(self, features, boxes, mask) -> torch.Tensor:
        return self.model(region_features=features, region_boxes=boxes, region_mask=mask)["image"]

    def cmcl(self, batch: dict) -> torch.Tensor:
        images = self.encode_images(batch["region_features"], batch["region_boxes"], batch["region_mask"])
        texts = self.encode_texts(batch["text_ids"], batch["text_mask"])
        size = len(images)
        positive = [(F.cosine_similarity(images, texts), torch.arange(size, device=images.device))]
        negative = []
        for name in ("positives", "retrieved_texts", "negatives"):
            if batch[f"{name}_ids"].shape[0]:
                (negative if name == "negatives" else positive).append(self._caption_scores(images, batch, name))
        if batch["retrieved_features"].shape[0]:
            owner = batch["retrieved_images_owner"].to(images.device)
            encoded = self.encode_images(batch["retrieved_features"], batch["retrieved_boxes"],
                                         batch["retrieved_region_mask"])
            positive.append((F.cosine_similarity(encoded, texts[owner]), owner))
        if self.in_batch_negatives and size > 1:
            grid = F.cosine_similarity(images[:, None], texts[None], dim=-1)
            rows, cols = (host_to(images.device, i) for i in torch.nonzero(~torch.eye(size, dtype=torch.bool),
                                                                            as_tuple=True))
            negative.append((grid[rows, cols], rows))
        pos, pos_mask = _group(positive, size, _most_per_pair(batch, ("positives", "retrieved_texts",
                                                                    "retrieved_images"), 1))
        neg, neg_mask = _group(negative, size, _most_per_pair(batch, ("negatives",),
                                                              size - 1 if self.in_batch_negatives else 0),
                               device=images.device)
        return cmcl_loss(pos, pos_mask, neg, neg_mask, temperature=self.temperature)

    def _caption_scores(self, images: torch.Tensor, batch: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """d(V, caption) for each caption of the augmentation `name` (positives, negatives, ...) against its
        pair's image, and the pair each belongs to."""
        owner = batch[f"{name}_owner"].to(images.device)
        encoded = self.encode_texts(batch[f"{name}_ids"], batch[f"{name}_mask"])
        return F.cosine_similarity(images[owner], encoded), owner

    def triplet(self, batch: dict) -> torch.Tensor:
        """The hardest-negative triplet loss (VSE++) over the batch's pairs, the scene-graph hard negatives
        (if the shards have them) competing with the other captions."""
        images = self.encode_images(batch["region_features"], batch["region_boxes"], batch["region_mask"])
        texts = self.encode_texts(batch["text_ids"], batch["text_mask"])
        grid = F.cosine_similarity(images[:, None], texts[None], dim=-1)
        negatives = mask = None
        if batch["negatives_ids"].shape[0]:
            negatives, mask = _group([self._caption_scores(images, batch, "negatives")], len(images),
                                     _most_per_pair(batch, ("negatives",), 0))
        return hardest_negative_triplet_loss(grid, margin=self.margin, caption_negatives=negatives,
                                             caption_negative_mask=mask)

    # -- language --

    def language(self, batch: dict, generator: torch.Generator, *, seq2seq: bool) -> torch.Tensor:
        ids, mask = batch["text_ids"], batch["text_mask"]
        special = torch.isin(ids, self.special_ids.to(ids.device)) | ~mask
        kwargs = _image_inputs(batch)  # none for text-only (corpus) batches
        if not seq2seq:
            masked, labels = span_mask(ids, special, mask_id=self.mask_id, vocab_size=self.vocab_size,
                                       generator=generator)
            out = self.model(text_ids=masked, text_mask=mask, **kwargs)
            logits = self.lm_head(out["hidden"][:, out["image_length"]:])
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return self._seq2seq(ids, mask, kwargs, generator)

    def _seq2seq(self, ids, mask, image_inputs, generator) -> torch.Tensor:
        """Target fragments are predicted left to right: position p's token from position p-1's state."""
        length = ids.shape[1]
        image_length = image_inputs["region_features"].shape[1] + 1 if image_inputs else 0
        target = seq2seq_targets(length, generator=generator)
        target[0] = False  # the first text token ([CLS] / <s>) stays in the source
        attention = host_to(ids.device, seq2seq_attention(target, prefix=image_length))
        out = self.model(text_ids=ids, text_mask=mask, attention=attention, **image_inputs)
        states = out["hidden"][:, image_length:]
        labels = torch.where(host_to(ids.device, target)[None] & mask, ids, torch.full_like(ids, -100))
        logits = self.lm_head(states[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    # -- visual --

    def visual(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Masked region modelling: feature regression, plus KL to the soft labels where there are some."""
        return self._regions(batch, generator)[0]

    def _regions(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(masked region modelling loss, region classification loss or None without soft labels)."""
        features, boxes, valid = batch["region_features"], batch["region_boxes"], batch["region_mask"]
        masked = region_masks(boxes[..., :4], valid.bool(), generator=generator)
        hidden_features = features.masked_fill(masked[..., None], 0)
        text = {"text_ids": batch["text_ids"], "text_mask": batch["text_mask"]} if "text_ids" in batch else {}
        out = self.model(region_features=hidden_features, region_boxes=boxes, region_mask=valid, **text)
        regions = out["hidden"][:, 1 : out["image_length"]]
        predicted = self.feature_head(regions)
        if "region_soft_labels" in batch:
            if self.class_head is None:
                raise ValueError("this batch has soft labels but the model was built with soft_label_classes=0")
            logits, labels = self.class_head(regions), batch["region_soft_labels"]
            regression, kl = masked_region_losses(predicted, features, logits, labels, masked)
            return regression + kl, region_classification_loss(logits, labels, masked)
        return masked_feature_regression(predicted, features, masked), None

    # -- matching --

    def matching(self, batch: dict, generator: torch.Generator, *, alignment: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image-text matching on the pair batch, and with `alignment` the word-region alignment loss on the
        same joint passes (else None)."""
        ids, mask, image, labels = _matching_rows(batch, generator)
        out = self.model(text_ids=ids, text_mask=mask, region_features=batch["region_features"][image],
                         region_boxes=batch["region_boxes"][image], region_mask=batch["region_mask"][image])
        matching = F.cross_entropy(self.match_head(out["text"]).float(), labels)
        if not alignment:
            return matching, None
        # Words after the first text token and regions after [IMG]: those two stand for the whole.
        start = out["image_length"]
        distance = word_region_distance(out["hidden"][:, start + 1 :], mask[:, 1:], out["hidden"][:, 1:start],
                                        batch["region_mask"][image])
        matched = labels.float()
        pulled = (distance * matched).sum() / matched.sum().clamp(min=1)
        pushed = (distance * (1 - matched)).sum() / (1 - matched).sum().clamp(min=1)
        return matching, pulled - pushed

    def forward(self, batch: dict, generator: torch.Generator, weights: ObjectiveWeights,
                text_batch: dict | None = None, image_batch: dict | None = None) -> dict[str, torch.Tensor]:
        """Every enabled loss for one pair batch (plus optional text-only and image-only batches: UNIMO's
        single-modal learning), and their weighted sum under "loss"."""
        losses: dict[str, torch.Tensor] = {}
        regions = weights.visual or weights.classification
        if text_batch is not None and weights.language:
            seq2seq = bool(torch.rand(1, generator=generator) < 0.5)
            losses["loss_text_seq2seq" if seq2seq else "loss_text_mlm"] = self.language(text_batch, generator,
                                                                                          seq2seq=seq2seq)
        if image_batch is not None and regions:
            self._add_region_losses(losses, "loss_image_", image_batch, generator)
        if weights.cmcl:
            retrieval = self.triplet if self.retrieval_loss == "triplet" else self.cmcl
            losses[f"loss_{self.retrieval_loss}"] = retrieval(batch)
        if weights.language:
            seq2seq = bool(torch.rand(1, generator=generator) < 0.5)
            losses["loss_seq2seq" if seq2seq else "loss_mlm"] = self.language(batch, generator, seq2seq=seq2seq)
        if regions:
            self._add_region_losses(losses, "loss_", batch, generator)
        if weights.matching or weights.alignment:
            losses["loss_itm"], alignment = self.matching(batch, generator, alignment=bool(weights.alignment))
            if alignment is not None:
                losses["loss_wra"] = alignment
        losses["loss"] = weighted_total(losses, weights)
        return losses

    def _add_region_losses(self, losses: dict, prefix: str, batch: dict, generator: torch.Generator) -> None:
        modelling, classification = self._regions(batch, generator)
        losses[f"{prefix}mrm"] = modelling
        if classification is not None:
            losses[f"{prefix}moc"] = classification


def _matching_rows(batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Text ids and mask, image row and label of each matching example: every pair (1), every image with
    the caption of the pair a random shift away (0), and every image with its first hard negative (0)."""
    ids, mask = batch["text_ids"], batch["text_mask"]
    size = ids.shape[0]
    rows = torch.arange(size, device=ids.device)
    texts, images, labels = [(ids, mask)], [rows], [torch.ones_like(rows)]
    if size > 1:
        shift = 1 + int(torch.randint(size - 1, (1,), generator=generator))
        texts.append((ids.roll(-shift, 0), mask.roll(-shift, 0)))
        images.append(rows)
        labels.append(torch.zeros_like(rows))
    if batch.get("negatives_ids") is not None and batch["negatives_ids"].shape[0]:
        owners = batch["negatives_owner"].to(ids.device)
        first = torch.ones_like(owners, dtype=torch.bool)
        first[1:] = owners[1:] != owners[:-1]  # owners come grouped: one hard negative per pair
        texts.append((batch["negatives_ids"][first], batch["negatives_mask"][first]))
        images.append(owners[first])
        labels.append(torch.zeros_like(owners[first]))
    length = max(t.shape[1] for t, _ in texts)
    return (torch.cat([F.pad(t, (0, length - t.shape[1])) for t, _ in texts]),
            torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in texts]), torch.cat(images), torch.cat(labels))


def _image_inputs(batch: dict) -> dict:
    if "region_features" not in batch:
        return {}
    return {"region_features": batch["region_features"], "region_boxes": batch["region_boxes"],
            "region_mask": batch["region_mask"]}


def _most_per_pair(batch: dict, names: tuple[str, ...], extra: int) -> int | None:
    """An upper bound on the scores one pair gets from these groups, from the collator's counts (None for
    batches without them)."""
    counts = [batch.get(f"{name}_per_pair") for name in names]
    return None if None in counts else sum(counts) + extra


def _group(parts: list[tuple[torch.Tensor, torch.Tensor]], size: int, width: int | None = None, *,
           device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with their owning pair -> padded (size, width) matrix and mask. `width`: an upper bound on
    the scores per pair, if known; otherwise it is measured (on a GPU, a sync)."""
    if not parts:
        return torch.zeros(size, 1, device=device), torch.zeros(size, 1, dtype=torch.bool, device=device)
    scores = torch.cat([s for s, _ in parts])
    owners = torch.cat([o for _, o in parts])
    counts = torch.bincount(owners, minlength=size)
    width = max(int(counts.max()) if width is None else width, 1)
    order = torch.argsort(owners, stable=True)
    owners, scores = owners[order], scores[order]
    starts = torch.cumsum(counts, 0) - counts
    columns = torch.arange(len(owners), device=owners.device) - starts[owners]
    padded = torch.zeros(size, width, dtype=scores.dtype, device=scores.device)
    mask = torch.zeros(size, width, dtype=torch.bool, device=scores.device)
    padded = padded.index_put((owners, columns), scores)
    mask[owners, columns] = True
    return padded, mask
