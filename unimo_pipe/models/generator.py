"""Generation on the unified model: image -> caption (the source is the image's regions and a start token)
and source text -> target text, UNIMO's seq2seq fine-tuning.

One sequence per example: [IMG] regions (captions), then the source text, left-padded so that every row's
source ends at the same column, then the target. The attention pattern is the seq2seq one of pretraining
(models/objectives.seq2seq_attention): the image and source attend bidirectionally among themselves, each
target token to the whole source and the target tokens up to itself. The state at the last source token
predicts the first target token, each target token's state the next one (the end token last). Text
positions count real tokens only (unified.text_positions), so padding never shifts them.

The head: a transform (Linear, GELU, LayerNorm) and the encoder's word embeddings as the output matrix (tied,
as BERT's masked-LM head), plus a bias. Saved as the unified model's folder plus generation.json (the task,
token ids, length limits) and generation_head.safetensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unimo_pipe.models.objectives import seq2seq_attention
from unimo_pipe.models.unified import UnifiedModel, text_positions

GENERATION_CONFIG = "generation.json"
GENERATION_HEAD = "generation_head.safetensors"
TASKS = ("caption", "text")


@dataclass(frozen=True)
class GenerationSetup:
    """What a saved generator needs beyond its weights."""

    task: str  # caption (image -> text) or text (source text -> target text)
    start_id: int  # begins the source ([CLS] / <s>)
    end_id: int  # ends the source and the target ([SEP] / </s>)
    pad_id: int
    banned_ids: tuple[int, ...]  # never generated: padding, start, mask, unknown
    max_source_tokens: int = 64
    max_target_tokens: int = 32

    @classmethod
    def for_tokenizer(cls, tokenizer, *, task: str, max_source_tokens: int, max_target_tokens: int
                      ) -> GenerationSetup:
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        banned = {start, tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id,
                  tokenizer.bos_token_id} - {None, end}
        return cls(task, start, end, tokenizer.pad_token_id, tuple(sorted(banned)), max_source_tokens,
                   max_target_tokens)


class Generator(nn.Module):
    def __init__(self, model: UnifiedModel, setup: GenerationSetup):
        super().__init__()
        hidden = model.hidden_size
        self.model, self.setup = model, setup
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.bias = nn.Parameter(torch.zeros(model.encoder.config.vocab_size))

    @property
    def with_image(self) -> bool:
        return self.setup.task == "caption"

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        words = self.model.encoder.embeddings.word_embeddings.weight
        return F.linear(self.transform(states), words, self.bias).float()

    def check_lengths(self, new_tokens: int) -> None:
        """A one-line error where the longest source plus `new_tokens` would run past the encoder's positions."""
        from unimo_pipe.pipeline.errors import UserError

        positions = self.model.encoder.config.max_position_embeddings - self.model.position_offset
        if self.setup.max_source_tokens + new_tokens > positions:
            raise UserError(f"sources of up to {self.setup.max_source_tokens} tokens plus {new_tokens} new ones need "
                            f"more than the model's {positions} positions: lower --max-source-tokens or "
                            "--max-new-tokens / --max-text-tokens")

    # -- the sequence layout --

    def image_inputs(self, batch: dict) -> dict:
        if not self.with_image:
            return {}
        return {k: batch[k] for k in ("region_features", "region_boxes", "region_mask")}

    def prefix_inputs(self, batch: dict) -> dict:
        """UnifiedModel inputs of the image and source alone (bidirectional: padding is all it masks)."""
        mask = batch["source_mask"]
        return {"text_ids": batch["source_ids"], "text_mask": mask, "text_positions": text_positions(mask),
                **self.image_inputs(batch)}

    def prefix_keep(self, batch: dict) -> torch.Tensor:
        """(B, prefix length): which prefix positions are real ([IMG], real regions, real source tokens)."""
        parts = [batch["source_mask"].bool()]
        if self.with_image:
            region_mask = batch["region_mask"].bool()
            parts.insert(0, torch.cat([torch.ones_like(region_mask[:, :1]), region_mask], dim=1))
        return torch.cat(parts, dim=1)

    def joint_inputs(self, batch: dict, target_ids: torch.Tensor, target_mask: torch.Tensor) -> dict:
        """UnifiedModel inputs of prefix + target under the seq2seq pattern."""
        ids = torch.cat([batch["source_ids"], target_ids], dim=1)
        mask = torch.cat([batch["source_mask"].bool(), target_mask.bool()], dim=1)
        image_length = batch["region_features"].shape[1] + 1 if self.with_image else 0
        target = torch.cat([torch.zeros(batch["source_ids"].shape[1], dtype=torch.bool),
                            torch.ones(target_ids.shape[1], dtype=torch.bool)]).to(ids.device)
        return {"text_ids": ids, "text_mask": mask, "text_positions": text_positions(mask),
                "attention": seq2seq_attention(target, prefix=image_length), **self.image_inputs(batch)}

    # -- training --

    def forward(self, batch: dict, *, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        """Teacher-forced cross-entropy of every target token (label smoothing as asked), and token accuracy."""
        target_ids, target_mask = batch["target_ids"], batch["target_mask"].bool()
        out = self.model(**self.joint_inputs(batch, target_ids, target_mask))
        first = out["hidden"].shape[1] - target_ids.shape[1] - 1  # the last source token
        logits = self.logits(out["hidden"][:, first:-1])
        labels = target_ids.masked_fill(~target_mask, -100)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                               label_smoothing=label_smoothing)
        correct = ((logits.argmax(-1) == target_ids) & target_mask).sum() / target_mask.sum().clamp(min=1)
        return {"loss": loss, "loss_generation": loss.detach(), "train_token_accuracy": correct.detach()}

    # -- saving --

    def save_pretrained(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(folder)
        (folder / GENERATION_CONFIG).write_text(json.dumps(asdict(self.setup), indent=2))
        head = {f"transform.{k}": v for k, v in self.transform.state_dict().items()}
        save_file({**{k: v.contiguous() for k, v in head.items()}, "bias": self.bias.detach().contiguous()},
                  str(folder / GENERATION_HEAD))

    @classmethod
    def from_pretrained(cls, folder: Path) -> Generator:
        """A saved generator (finetune-caption's or finetune-seq2seq's OUT/model)."""
        from safetensors.torch import load_file

        from unimo_pipe.pipeline.errors import UserError

        if not (folder / GENERATION_CONFIG).is_file():
            raise UserError(f"{folder} was not fine-tuned for generation (it has no {GENERATION_CONFIG}): pass the "
                            "model folder that finetune-caption or finetune-seq2seq wrote (OUT/model)")
        try:
            values = json.loads((folder / GENERATION_CONFIG).read_text())
            setup = GenerationSetup(**{**values, "banned_ids": tuple(values["banned_ids"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{folder / GENERATION_CONFIG} is damaged ({type(exc).__name__}): fine-tune "
                            "again") from None
        generator = cls(UnifiedModel.from_pretrained(folder), setup)
        try:
            weights = load_file(str(folder / GENERATION_HEAD))
            generator.bias.data.copy_(weights.pop("bias"))
            generator.transform.load_state_dict({k.removeprefix("transform."): v for k, v in weights.items()})
        except Exception as exc:  # missing, truncated, or another model's head
            raise UserError(f"{folder / GENERATION_HEAD} does not hold this generator's head ({type(exc).__name__}): "
                            "pass the model folder that finetune-caption or finetune-seq2seq wrote") from None
        return generator
