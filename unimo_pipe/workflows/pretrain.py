"""The UNIMO pretraining recipe: setup(), train(), cleanup(). Runs alone or under torchrun (DDP).

    torchrun --nproc-per-node 8 -m unimo_pipe pretrain --shards runs/shards --tokenizer roberta-base \
        --init roberta-base --out runs/pretrain

`finetune` (FinetuneRecipe) is the same loop started from a saved model with retrieval defaults.

Exact resume: every step seeds its own randomness from (seed, step, rank) and batches come from the data
layer's BatchPlan at a saved (epoch, batch) position, so a run resumed from a checkpoint repeats the
uninterrupted run's losses. Metrics go to OUT/metrics.jsonl (rank 0), rewritten on resume so no line is
doubled; checkpoints to OUT/checkpoints/; the final model to OUT/model/ (config.json + model.safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from unimo_pipe.models.pretraining import one_task_weights
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import atomic_write, iter_jsonl, write_json_atomic
from unimo_pipe.pipeline.training_data import batch_to_device
from unimo_pipe.workflows.evaluate import encode_pairs, retrieval_recall
from unimo_pipe.workflows.pretrain_options import PretrainOptions

logger = logging.getLogger("unimo_pipe")


class PretrainRecipe:
    metric_prefix = "zero_shot_"  # retrieval after pretraining alone is zero-shot
    eval_file = "zero_shot.json"

    def __init__(self, options: PretrainOptions):
        if options.init and options.model is not None:
            raise UserError("give --init (an encoder to start from) or --model (a saved unimo-pipe model), not both")
        self.options = options

    # -- setup --

    def setup(self) -> None:
        self._setup_distributed()
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self.step = 0
        self._resume()
        self.board = self._tensorboard()

    def _tensorboard(self):
        """A TensorBoard writer on rank 0 (OUT/tensorboard), or None where tensorboard is not installed."""
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("pretrain: tensorboard is not installed; metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.options.out / "tensorboard"), purge_step=self.step + 1)

    def _setup_distributed(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                                   else "cpu")
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

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
        self.dataset = PairDataset(self.examples, sampling=sampling, seed=o.seed)
        self.streams = {"pair": self._stream(self.dataset, self.examples, self.collator.pairs)}
        self.region_examples = [self.examples]
        totals = load_manifest(o.shards)["totals"]
        if o.single_modal and o.weight_language and totals.get("text"):
            text = self._examples("text")
            self.streams["text"] = self._stream(TextDataset(text), text, self.collator.texts)
        if o.single_modal and o.weight_visual and totals.get("image"):
            images = self._examples("image")
            self.streams["image"] = self._stream(ImageDataset(images), images, self.collator.images)
            self.region_examples.append(images)

    def _examples(self, kind: str, shards: Path | None = None):
        from unimo_pipe.pipeline.training_data import Examples

        o = self.options
        return Examples(shards or o.shards, kind, tokenizer=self.tokenizer, max_text_tokens=o.max_text_tokens,
                        max_regions=o.max_regions)

    def _stream(self, dataset, examples, collate) -> _Stream:
        from unimo_pipe.pipeline.training_data import BatchPlan

        o = self.options
        plan = BatchPlan(examples.text_lengths + examples.box_counts(), batch_size=o.batch_size, rank=self.rank,
                         world_size=self.world_size, seed=o.seed)
        return _Stream(dataset, plan, collate, o.workers)

    def _setup_model(self) -> None:
        from unimo_pipe.models.pretraining import ObjectiveWeights, UnimoPretraining
        from unimo_pipe.models.unified import UnifiedModel, tiny_encoder

        o = self.options
        sample = self.examples.features.db[self.examples.keys[0]]
        region_dim = sample["features"].shape[1]
        classes = soft_label_width(self.region_examples)
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
        specials = [i for i in (self.tokenizer.pad_token_id, self.tokenizer.cls_token_id,
                                self.tokenizer.sep_token_id, self.tokenizer.bos_token_id,
                                self.tokenizer.eos_token_id) if i is not None]
        self.module = UnimoPretraining(model, vocab_size=len(self.tokenizer), mask_id=self.tokenizer.mask_token_id,
                                       special_ids=specials, temperature=o.temperature,
                                       in_batch_negatives=o.in_batch_negatives, soft_label_classes=classes,
                                       retrieval_loss=o.retrieval_loss, margin=o.margin).to(self.device)
        self.weights = ObjectiveWeights(cmcl=o.weight_cmcl, language=o.weight_language, visual=o.weight_visual,
                                        matching=o.weight_matching, classification=o.weight_classification,
                                        alignment=o.weight_alignment)
        if o.compile:
            model.compile()
        self.trainer = self.module
        if self.world_size > 1:
            self.trainer = torch.nn.parallel.DistributedDataParallel(self.module, find_unused_parameters=True)

    def _setup_optimizer(self) -> None:
        o = self.options
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                           fused=self.device.type == "cuda")

        def schedule(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            return max(0.0, (o.steps - step) / max(1, o.steps - o.warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    # -- checkpoints --

    def _checkpoint_dir(self) -> Path:
        return self.options.out / "checkpoints"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step,
                 "streams": {name: stream.position() for name, stream in self.streams.items()}}
        path = self._checkpoint_dir() / f"step-{self.step:08d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
        write_json_atomic(self._checkpoint_dir() / "latest.json", {"path": path.name, "step": self.step})

    def _resume(self) -> None:
        latest = self._checkpoint_dir() / "latest.json"
        if not latest.is_file():
            return
        name = json.loads(latest.read_text())["path"]
        state = torch.load(self._checkpoint_dir() / name, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        for name, position in state["streams"].items():
            if name in self.streams:
                self.streams[name].seek(*position)
        self._truncate_metrics()
        logger.info("pretrain: resumed from %s at step %d", name, self.step)

    def _truncate_metrics(self) -> None:
        path = self.options.out / "metrics.jsonl"
        if self.rank == 0 and path.is_file():
            rows = [row for _, row, problem in iter_jsonl(path) if not problem and row.get("step", 0) <= self.step]
            with atomic_write(path) as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    # -- train --

    def train(self) -> list[dict[str, Any]]:
        o = self.options
        history, started, samples = [], time.perf_counter(), 0
        while self.step < o.steps:
            torch.manual_seed(o.seed * 1_000_003 + self.step * 101 + self.rank)  # dropout: a function of the step
            generator = torch.Generator().manual_seed(o.seed * 7_919 + self.step * 13 + self.rank)
            totals: dict[str, torch.Tensor] = {}  # kept on the device: read once per step, not once per loss
            for _ in range(o.grad_accum):
                losses, size = self._micro_batch_losses(generator)
                (losses["loss"] / o.grad_accum).backward()
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.detach().float() / o.grad_accum
                samples += size
            if o.clip:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), o.clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            values = torch.stack(list(totals.values())).tolist()
            row = {"step": self.step, **{k: round(v, 6) for k, v in zip(totals, values, strict=True)},
                   "lr": self.scheduler.get_last_lr()[0],
                   "samples_per_s": round(samples * self.world_size / (time.perf_counter() - started), 2)}
            history.append(row)
            self._after_step(row)
        return history

    def _micro_batch_losses(self, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
        """The losses of the next micro-batch (one of each stream), and how many pairs it held."""
        batch, text, image = (batch_to_device(next(self.streams[k]), self.device) if k in self.streams else None
                              for k in ("pair", "text", "image"))
        weights = one_task_weights(self.weights, generator) if self.options.one_task_per_step else self.weights
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            losses = self.trainer(batch, generator, weights, text, image)
        return losses, len(batch["index"])

    def _after_step(self, row: dict[str, Any]) -> None:
        o = self.options
        if o.eval_every and self.step % o.eval_every == 0:
            row.update(self.evaluate())
        if self.rank == 0 and (self.step % o.log_every == 0 or self.step == o.steps):
            o.out.mkdir(parents=True, exist_ok=True)
            with (o.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.board is not None:
                for name, value in row.items():
                    if name != "step":
                        self.board.add_scalar(name, value, self.step)
        if self.step % o.checkpoint_every == 0 or self.step == o.steps:
            self.save_checkpoint()

    def evaluate(self) -> dict[str, float]:
        """Image-text retrieval (R@1/5/10 both ways) on the first eval_pairs pairs of --eval-shards, or of
        the training shards."""
        examples = self.eval_examples or self.examples
        count = min(self.options.eval_pairs, len(examples.keys))
        images, texts, keys = encode_pairs(self.module.model, examples, self.collator, count=count,
                                           batch_size=self.options.batch_size, device=self.device)
        return retrieval_recall(images, texts, keys, prefix=self.metric_prefix)

    def save_model(self, folder: Path) -> None:
        self.module.model.save_pretrained(folder)

    def cleanup(self) -> None:
        if getattr(self, "board", None) is not None:
            self.board.close()
        if self.rank == 0:
            self.save_model(self.options.out / "model")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _Stream:
    """Batches of one kind (pairs, texts, images) from a saved (epoch, batch) position, epoch after epoch."""

    def __init__(self, dataset, plan, collate, workers: int):
        self.dataset, self.plan, self.collate, self.workers = dataset, plan, collate, workers
        self.epoch, self.batch_in_epoch = 0, 0
        self._iterator = None

    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch_in_epoch

    def seek(self, epoch: int, batch_in_epoch: int) -> None:
        self.epoch, self.batch_in_epoch, self._iterator = epoch, batch_in_epoch, None

    def __next__(self) -> dict:
        from unimo_pipe.pipeline.training_data import make_loader

        while True:
            if self._iterator is None:
                self.plan.set_position(self.epoch, self.batch_in_epoch)
                if hasattr(self.dataset, "epoch"):
                    self.dataset.epoch = self.epoch
                self._iterator = iter(make_loader(self.dataset, self.plan, self.collate, workers=self.workers))
            batch = next(self._iterator, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            self.seek(self.epoch + 1, 0)


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


class FinetuneRecipe(PretrainRecipe):
    """Retrieval fine-tuning: the same loop from a saved model, with FinetuneOptions' defaults."""

    metric_prefix = ""
    eval_file = "retrieval.json"


def run_pretraining(options: PretrainOptions, recipe_class: type[PretrainRecipe] = PretrainRecipe
                    ) -> list[dict[str, Any]]:
    recipe = recipe_class(options)
    recipe.setup()
    try:
        history = recipe.train()
        final = recipe.evaluate()
        if recipe.rank == 0:
            write_json_atomic(options.out / recipe.eval_file, final)
        if history:
            history[-1].update(final)
        return history
    finally:
        recipe.cleanup()

