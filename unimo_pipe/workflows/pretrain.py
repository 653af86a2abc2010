"""The UNIMO pretraining recipe: setup(), train(), cleanup(). Runs alone or under torchrun (DDP).

    torchrun --nproc-per-node 8 -m unimo_pipe pretrain --shards runs/shards --tokenizer roberta-base \
        --init roberta-base --out runs/pretrain

`finetune` (FinetuneRecipe) is the same recipe started from a saved model with retrieval defaults. The
recipe owns a TrainingLoop (workflows/training_loop.py: DDP, optimizer, accumulation, bf16, checkpoints
with exact resume, metrics); what it adds is the data (pair, text-only and image-only streams), the UNIMO
objectives and retrieval R@1/5/10. Outputs: OUT/metrics.jsonl, OUT/checkpoints/, OUT/zero_shot.json
(finetune: OUT/retrieval.json) and the final model, OUT/model/ (config.json + model.safetensors).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from unimo_pipe.models.pretraining import ObjectiveWeights, one_task_weights
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.training_data import batch_to_device
from unimo_pipe.workflows.evaluate import encode_pairs, retrieval_recall
from unimo_pipe.workflows.pretrain_options import PretrainOptions
from unimo_pipe.workflows.training_loop import TrainingLoop

logger = logging.getLogger("unimo_pipe")


class PretrainRecipe:
    command = "pretrain"
    metric_prefix = "zero_shot_"  # retrieval after pretraining alone is zero-shot
    scores_file = "zero_shot.json"

    def __init__(self, options: PretrainOptions):
        if options.init and options.model is not None:
            raise UserError("give --init (an encoder to start from) or --model (a saved unimo-pipe model), not both")
        self.options = options

    # -- setup --

    def setup(self) -> None:
        self.loop = TrainingLoop(self.options, name=self.command)
        self._setup_data()
        self._setup_model()
        self.loop.prepare(self.module, find_unused_parameters=True)  # each step trains some objectives only

    def _setup_data(self) -> None:
        from unimo_pipe.models.tokenizers import load_tokenizer
        from unimo_pipe.pipeline.training_data import (
            Collator,
            ImageDataset,
            PairDataset,
            Sampling,
            TextDataset,
            load_manifest,
        )

        o = self.options
        self.tokenizer = load_tokenizer(o.tokenizer, of="--tokenizer")
        self.collator = Collator(self.tokenizer, max_text_tokens=o.max_text_tokens)
        self.examples = self._examples("pair")
        self.eval_examples = self._examples("pair", o.eval_shards) if o.eval_shards is not None else None
        sampling = Sampling(o.positives, o.negatives, o.retrieved_images, o.retrieved_texts)
        pairs = PairDataset(self.examples, sampling=sampling, seed=o.seed)
        self.streams = {"pair": self._stream("pair", pairs, self.examples, self.collator.pairs)}
        self.region_examples = [self.examples]
        totals = load_manifest(o.shards)["totals"]
        if o.single_modal and o.weight_language and totals.get("text"):
            text = self._examples("text")
            self.streams["text"] = self._stream("text", TextDataset(text), text, self.collator.texts)
        if o.single_modal and o.weight_visual and totals.get("image"):
            images = self._examples("image")
            self.streams["image"] = self._stream("image", ImageDataset(images), images, self.collator.images)
            self.region_examples.append(images)

    def _examples(self, kind: str, shards: Path | None = None):
        from unimo_pipe.pipeline.training_data import Examples

        o = self.options
        return Examples(shards or o.shards, kind, max_regions=o.max_regions)

    def _stream(self, name: str, dataset, examples, collate):
        return self.loop.add_stream(name, dataset, examples.text_lengths + examples.box_counts(), collate)

    def _setup_model(self) -> None:
        from unimo_pipe.models.pretraining import ObjectiveWeights, UnimoPretraining
        from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

        o = self.options
        region_dim = self.examples.features.db[self.examples.keys[0]]["features"].shape[1]
        torch.manual_seed(o.seed)
        if o.model is not None:
            model = UnifiedModel.from_pretrained(o.model)
            if model.region_dim != region_dim:
                raise UserError(f"{o.model} takes {model.region_dim}-d region features but {o.shards} holds "
                                f"{region_dim}-d ones: use shards made with the same detector")
        elif o.init:
            model = UnifiedModel.from_encoder(o.init, region_dim=region_dim)
        else:
            model = UnifiedModel(tiny_encoder(len(self.tokenizer), hidden=o.tiny_hidden), region_dim=region_dim)
        dropout = o.dropout if o.dropout is not None else (0.0 if not (o.init or o.model) else None)
        if dropout is not None:
            model.set_dropout(dropout)
        specials = [i for i in (self.tokenizer.pad_token_id, self.tokenizer.cls_token_id,
                                self.tokenizer.sep_token_id, self.tokenizer.bos_token_id,
                                self.tokenizer.eos_token_id) if i is not None]
        self.module = UnimoPretraining(model, vocab_size=len(self.tokenizer), mask_id=self.tokenizer.mask_token_id,
                                       special_ids=specials, soft_label_classes=soft_label_width(self.region_examples),
                                       temperature=o.temperature, in_batch_negatives=o.in_batch_negatives,
                                       retrieval_loss=o.retrieval_loss, margin=o.margin).to(self.loop.device)
        self.weights = ObjectiveWeights(cmcl=o.weight_cmcl, language=o.weight_language, visual=o.weight_visual,
                                        matching=o.weight_matching, classification=o.weight_classification,
                                        alignment=o.weight_alignment)
        if o.compile:
            model.compile()
        _warn_if_cmcl_cannot_learn(o, self.examples, self.command)

    # -- train --

    def train(self) -> list[dict[str, Any]]:
        """Train to --steps, then score retrieval and save OUT/model; the metric rows of the steps this run
        made."""
        history = self.loop.train(self._micro_batch_losses, evaluate=self.evaluate)
        self.loop.finish(history, self.evaluate(), scores_file=self.scores_file,
                         save_model=self.module.model.save_pretrained)
        return history

    def _micro_batch_losses(self, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
        """The losses of the next micro-batch (one of each stream), and how many pairs it held."""
        batch, text, image = (batch_to_device(next(self.streams[k]), self.loop.device) if k in self.streams
                              else None for k in ("pair", "text", "image"))
        weights = self.weights
        if weights.cmcl and self.loop.step < self.options.cmcl_first * self.options.steps:
            weights = ObjectiveWeights(cmcl=weights.cmcl, language=0.0, visual=0.0)
        elif self.options.one_task_per_step:
            weights = one_task_weights(weights, generator)
        with self.loop.autocast():
            losses = self.loop.trainer(batch, generator, weights, text, image)
        return losses, len(batch["index"])

    def evaluate(self) -> dict[str, float]:
        """Image-text retrieval (R@1/5/10 both ways) on the first eval_pairs pairs of --eval-shards, or of
        the training shards."""
        examples = self.eval_examples or self.examples
        count = min(self.options.eval_pairs, len(examples.keys))
        images, texts, keys = encode_pairs(self.module.model, examples, self.collator, count=count,
                                           batch_size=self.options.batch_size, device=self.loop.device)
        return retrieval_recall(images, texts, keys, prefix=self.metric_prefix)

    def cleanup(self) -> None:
        self.loop.close()


class FinetuneRecipe(PretrainRecipe):
    """Retrieval fine-tuning: the pretrain recipe from a saved model, with FinetuneOptions' defaults."""

    command = "finetune"
    metric_prefix = ""
    scores_file = "retrieval.json"


def _warn_if_cmcl_cannot_learn(options: PretrainOptions, examples, command: str, *, look_at: int = 200) -> None:
    """One warning when CMCL's loss is 0 at every step: without negatives (no hard negatives in the first
    `look_at` pairs or --negatives 0, and no in-batch ones) each pair's positives are its whole denominator."""
    if not options.weight_cmcl or options.retrieval_loss != "cmcl" or options.in_batch_negatives:
        return
    if options.negatives and any(examples.row(i).get("negatives") for i in range(min(look_at, len(examples)))):
        return
    why = "--negatives 0" if not options.negatives else f"the pairs of {options.shards} have no hard negatives"
    logger.warning("%s: CMCL has no negatives (%s, and --in-batch-negatives is off): its loss is 0 at every "
                   "step and teaches nothing; add --in-batch-negatives, or shards made with `augment "
                   "--scene-graph` negatives", command, why)


def soft_label_width(examples: list) -> int:
    """How many classes the soft labels (the detector's class distributions) of these Examples' images
    have, read from the first image of each; 0 where their stores have none."""
    widths = set()
    for each in examples:
        first = each.features.db[each.keys[0]] if each.features is not None and each.keys else {}
        if "soft_labels" in first:
            widths.add(first["soft_labels"].shape[1])
    if len(widths) > 1:
        raise UserError(f"the shards' images have soft labels of {' and '.join(map(str, sorted(widths)))} classes: "
                        "use region features from one detector")
    return widths.pop() if widths else 0
