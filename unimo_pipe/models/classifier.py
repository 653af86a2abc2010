"""Classification on the unified model. Image-text tasks: the image and the text are encoded jointly (one
sequence, [IMG] regions then text) and the [IMG] and first text token states, concatenated, go through a
two-layer head (UNITER's VQA head shape: Linear, GELU, LayerNorm, Linear). Text tasks: the first text
token state of the text alone goes through the same kind of head.

Regression (STS-B's similarity): the same head with one output, trained with mean squared error.

Saved as the unified model's folder plus classifier.json (the class labels, in order, whether the
classifier takes images, and whether it regresses) and classifier.safetensors (the head).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unimo_pipe.models.unified import UnifiedModel

HEAD_CONFIG = "classifier.json"
HEAD_WEIGHTS = "classifier.safetensors"


class PairClassifier(nn.Module):
    def __init__(self, model: UnifiedModel, labels: list[str], *, with_image: bool = True, regression: bool = False):
        super().__init__()
        width = (2 if with_image else 1) * model.hidden_size
        self.model = model
        self.labels = [] if regression else list(labels)
        self.with_image, self.regression = with_image, regression
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width),
                                  nn.Linear(width, 1 if regression else len(self.labels)))

    def logits(self, batch: dict) -> torch.Tensor:
        if not self.with_image:
            return self.head(self.model(text_ids=batch["text_ids"], text_mask=batch["text_mask"])["text"]).float()
        out = self.model(text_ids=batch["text_ids"], text_mask=batch["text_mask"],
                         region_features=batch["region_features"], region_boxes=batch["region_boxes"],
                         region_mask=batch["region_mask"])
        return self.head(torch.cat([out["image"], out["text"]], dim=-1)).float()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The training losses of a `Collator.labelled` batch (and its accuracy, for the logs)."""
        logits = self.logits(batch)
        if self.regression:
            loss = F.mse_loss(logits.squeeze(-1), batch["labels"].float())
            return {"loss": loss, "loss_regression": loss.detach()}
        loss = F.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {"loss": loss, "loss_classification": loss.detach(), "train_accuracy": accuracy}

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(folder)
        config = {"labels": self.labels, "with_image": self.with_image}
        if self.regression:
            config["regression"] = True
        (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(folder / HEAD_WEIGHTS))

    @classmethod
    def from_pretrained(cls, folder: Path) -> PairClassifier:
        """A saved classifier (finetune-classifier's OUT/model)."""
        from safetensors.torch import load_file

        from unimo_pipe.pipeline.errors import UserError

        if not (folder / HEAD_CONFIG).is_file():
            raise UserError(f"{folder} has no {HEAD_CONFIG}: pass the model folder that finetune-classifier wrote "
                            "(OUT/model)")
        config = json.loads((folder / HEAD_CONFIG).read_text())
        classifier = cls(UnifiedModel.from_pretrained(folder), config["labels"],
                         with_image=config.get("with_image", True), regression=config.get("regression", False))
        try:
            classifier.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        except Exception as exc:  # missing, truncated, or another head's shape
            raise UserError(f"{folder / HEAD_WEIGHTS} does not hold this classifier's head ({type(exc).__name__}): "
                            "pass the model folder that finetune-classifier wrote") from None
        return classifier
