"""The training loop that the pretrain, finetune and finetune-classifier recipes each own, and `run_recipe`.

The loop holds what does not depend on the task: distributed setup (DDP under torchrun), AdamW with a
linear warmup and decay, gradient accumulation, bf16 autocast, checkpoints with exact resume,
OUT/metrics.jsonl, TensorBoard, and the step streams. A recipe gives it the data (as streams), the module
to train and, per micro-batch, that module's losses.

Exact resume: every step seeds its own randomness from (seed, step, rank) and batches come from the data
layer's BatchPlan at a saved (epoch, batch) position, so a run resumed from a checkpoint repeats the
uninterrupted run's losses. Metrics go to OUT/metrics.jsonl (rank 0), rewritten on resume so no line is
doubled; checkpoints to OUT/checkpoints/. Only a run that finishes writes OUT/model: one that stops
early keeps its last checkpoint, and rerunning the same command resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from unimo_pipe.pipeline.checkpoints import load_checkpoint
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.jsonl import atomic_write, iter_jsonl, read_json, write_json_atomic
from unimo_pipe.workflows.pretrain_options import TrainingLoopOptions

logger = logging.getLogger("unimo_pipe")

RUN_RECORD = "run.json"  # the command and the options that shape the run, as `unimo-pipe` stages keep stage.json

MicroBatchLosses = Callable[[torch.Generator], tuple[dict[str, torch.Tensor], int]]
"""The recipe's step: the losses of its next micro-batch ("loss" is the one trained; the others are logged)
and how many examples it held, given the step's random generator. Its forward pass runs under
TrainingLoop.autocast()."""


class TrainingRecipe(Protocol):
    """What `run_recipe` runs: a recipe that owns a TrainingLoop."""

    loop: TrainingLoop

    def setup(self) -> None: ...

    def train(self) -> list[dict[str, Any]]: ...

    def cleanup(self) -> None: ...


def run_recipe(recipe: TrainingRecipe) -> list[dict[str, Any]]:
    """setup(), train(), cleanup(); the metric rows of the steps this run made. A run that stops early (an
    error, Ctrl-C) writes no OUT/model and logs which checkpoint a rerun resumes from."""
    recipe.setup()
    try:
        return recipe.train()
    except BaseException:
        recipe.loop.report_unfinished()
        raise
    finally:
        recipe.cleanup()


class TrainingLoop:
    """The task-independent part of training: a recipe adds its streams, prepares its module, then calls
    train() with its micro-batch step and finish() with its final scores and model."""

    def __init__(self, options: TrainingLoopOptions, *, name: str):
        """Joins the torchrun process group, if any. `name` (the command) prefixes the log lines."""
        self.options, self.name = options, name
        self.rank = int(os.environ.get("RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                                   else "cpu")
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.bf16 = options.precision == "bf16" or (options.precision == "auto" and self.device.type == "cuda")
        self.streams: dict[str, StepStream] = {}
        self.step = 0
        self.board = None
        self.interval = IntervalMeans()

    # -- setup --

    def add_stream(self, name: str, dataset, sizes, collate) -> StepStream:
        """Batches of `dataset` for this rank, epoch after epoch, bucketed by `sizes` (one per example); its
        position is saved in the checkpoints under `name`."""
        from unimo_pipe.pipeline.training_data import BatchPlan

        o = self.options
        plan = BatchPlan(sizes, batch_size=o.batch_size, rank=self.rank, world_size=self.world_size, seed=o.seed)
        self.streams[name] = StepStream(dataset, plan, collate, o.workers)
        return self.streams[name]

    def prepare(self, module: torch.nn.Module, *, find_unused_parameters: bool = False) -> None:
        """Train `module` (on self.device): wrapped for DDP across ranks, with its optimizer and schedule,
        resumed from OUT's latest checkpoint if there is one. Call after adding every stream."""
        self.module = module
        self.trainer = module  # what the recipe calls: the DDP wrapper synchronises the gradients
        if self.world_size > 1:
            self.trainer = torch.nn.parallel.DistributedDataParallel(module,
                                                                     find_unused_parameters=find_unused_parameters)
        self._check_run_record()
        self._setup_optimizer()
        if not self._resume() and self.options.resume_from is not None:
            self._start_from_weights(self.options.resume_from)
        self.board = self._tensorboard()

    # -- the run's options, recorded so a rerun with other options never continues this run's checkpoints --

    @property
    def run_record(self) -> Path:
        return self.options.out / RUN_RECORD

    def _check_run_record(self) -> None:
        """Refuse (or, with --overwrite, clear) an --out whose run was made with other options."""
        from unimo_pipe.pipeline.config import output_affecting_dict

        options = {"command": self.name, **output_affecting_dict(self.options)}
        previous = _read_run_record(self.run_record)
        if previous is not None and previous != options and self._latest_checkpoint() is not None:
            if not self.options.overwrite:
                changed = sorted(k for k in set(previous) | set(options) if previous.get(k) != options.get(k))
                raise UserError(f"{self.options.out} holds a {previous.get('command')} run made with other options "
                                f"(changed: {', '.join(changed)}): use another --out, --overwrite to start again, "
                                "or --resume-from a checkpoint of it to start a new run from its weights")
            self._clear_previous_run()
        if self.rank == 0:
            write_json_atomic(self.run_record, options)
            self._write_config()
        if self.world_size > 1:
            torch.distributed.barrier()  # no rank resumes from what rank 0 is clearing

    def _write_config(self) -> None:
        """OUT/config.yaml: every resolved option, as stages write theirs (run.json keeps the ones that
        shape the run, with inputs as fingerprints)."""
        import yaml

        from unimo_pipe.pipeline.config import options_to_dict
        from unimo_pipe.pipeline.formats import CONFIG_FILE

        with atomic_write(self.options.out / CONFIG_FILE) as f:
            yaml.safe_dump({"command": self.name, **options_to_dict(self.options)}, f, sort_keys=False)

    def _clear_previous_run(self) -> None:
        if self.rank != 0:
            return
        logger.warning("%s: --overwrite: removing the previous run's checkpoints, metrics and model in %s",
                       self.name, self.options.out)
        for name in ("checkpoints", "tensorboard", "model"):
            shutil.rmtree(self.options.out / name, ignore_errors=True)
        (self.options.out / "metrics.jsonl").unlink(missing_ok=True)

    def _start_from_weights(self, checkpoint: Path) -> None:
        state = load_checkpoint(checkpoint, map_location=self.device)
        self.module.load_state_dict(state.get("model", state))
        logger.info("%s: starting from the weights of %s", self.name, checkpoint)

    def _setup_optimizer(self) -> None:
        o = self.options
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                           fused=self.device.type == "cuda")

        def schedule(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            return max(0.0, (o.steps - step) / max(1, o.steps - o.warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def _tensorboard(self):
        """A TensorBoard writer on rank 0 (OUT/tensorboard), or None where tensorboard is not installed."""
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("%s: tensorboard is not installed; metrics go to metrics.jsonl only", self.name)
            return None
        return SummaryWriter(str(self.options.out / "tensorboard"), purge_step=self.step + 1)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where --precision asks for it (auto: on GPU only), else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # -- checkpoints --

    @property
    def checkpoint_dir(self) -> Path:
        return self.options.out / "checkpoints"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step,
                 "streams": {name: stream.position() for name, stream in self.streams.items()}}
        path = self.checkpoint_dir / f"step-{self.step:08d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
        write_json_atomic(self.checkpoint_dir / "latest.json", {"path": path.name, "step": self.step})

    def _latest_checkpoint(self) -> dict[str, Any] | None:
        latest = self.checkpoint_dir / "latest.json"
        return read_json(latest) if latest.is_file() else None

    def _resume(self) -> bool:
        """Continue from OUT's latest checkpoint, if there is one (True)."""
        latest = self._latest_checkpoint()
        if latest is None:
            return False
        state = load_checkpoint(self.checkpoint_dir / latest["path"], map_location=self.device)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        for name, position in state["streams"].items():
            if name in self.streams:
                self.streams[name].seek(*position)
        self._truncate_metrics()
        logger.info("%s: resumed from %s at step %d", self.name, latest["path"], self.step)
        return True

    def _truncate_metrics(self) -> None:
        path = self.options.out / "metrics.jsonl"
        if self.rank == 0 and path.is_file():
            rows = [row for _, row, problem in iter_jsonl(path) if not problem and row.get("step", 0) <= self.step]
            for row in rows:  # the losses the run had computed stay on every line after the resume too
                self.interval.remember(row)
            with atomic_write(path) as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    # -- train --

    def train(self, micro_batch_losses: MicroBatchLosses, *, evaluate: Callable[[], dict[str, Any]]
              ) -> list[dict[str, Any]]:
        """Optimizer steps up to --steps, each over --grad-accum micro-batches; the metric rows of the steps
        made. `evaluate` runs every --eval-every steps, its scores joining that step's row."""
        o = self.options
        history, started, samples = [], time.perf_counter(), 0
        while self.step < o.steps:
            torch.manual_seed(o.seed * 1_000_003 + self.step * 101 + self.rank)  # dropout: a function of the step
            generator = torch.Generator().manual_seed(o.seed * 7_919 + self.step * 13 + self.rank)
            totals: dict[str, torch.Tensor] = {}  # kept on the device: read once per step, not once per loss
            for _ in range(o.grad_accum):
                losses, size = micro_batch_losses(generator)
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
            if o.eval_every and self.step % o.eval_every == 0:
                row.update(evaluate())
            history.append(row)
            self.interval.add(row)
            self._after_step(row)
        return history

    def _after_step(self, row: dict[str, Any]) -> None:
        """Log the interval's mean losses (metrics.jsonl, TensorBoard) and checkpoint, each at its interval."""
        o = self.options
        if self.step % o.log_every == 0 or self.step == o.steps:
            logged = self.interval.row(row)
            if self.rank == 0:
                self._log(logged)
        if self.step % o.checkpoint_every == 0 or self.step == o.steps:
            self.save_checkpoint()

    def _log(self, row: dict[str, Any]) -> None:
        self.options.out.mkdir(parents=True, exist_ok=True)
        with (self.options.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            for name, value in row.items():
                if name != "step" and value is not None:
                    self.board.add_scalar(name, value, self.step)

    # -- the end --

    def finish(self, history: list[dict[str, Any]], scores: dict[str, Any], *, scores_file: str,
               save_model: Callable[[Path], None]) -> None:
        """After the last step: the final `scores` to OUT/`scores_file` and onto the last row of `history`,
        and the trained model to OUT/model (rank 0 writes)."""
        if history:
            history[-1].update(scores)
        if self.rank == 0:
            write_json_atomic(self.options.out / scores_file, scores)
            save_model(self.options.out / "model")

    def report_unfinished(self) -> None:
        """One log line for a run that stopped before finishing: which checkpoint a rerun resumes from."""
        if self.rank != 0:
            return
        latest = self._latest_checkpoint()
        model = self.options.out / "model"
        if latest is None:
            logger.warning("%s: stopped at step %d of %d, before its first checkpoint (%s was not written): "
                           "rerun the same command to start again", self.name, self.step, self.options.steps, model)
            return
        logger.warning("%s: stopped at step %d of %d (%s was not written); its last checkpoint is %s (step %d): "
                       "rerun the same command to resume from it", self.name, self.step, self.options.steps, model,
                       self.checkpoint_dir / latest["path"], latest["step"])

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class IntervalMeans:
    """The losses of the steps since the last metrics line, averaged per loss over the steps that computed
    it. Every loss the run has computed is on every line: null where no step of the interval computed it
    (UNIMO's language loss is MLM or seq2seq, drawn per step)."""

    def __init__(self):
        self.seen: dict[str, None] = {}  # every loss name so far, in first-seen order
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> None:
        for name, value in row.items():
            if name.startswith("loss"):
                self.seen.setdefault(name)
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1

    def remember(self, row: dict[str, Any]) -> None:
        """Know the losses of an earlier metrics line (a resumed run's) without counting their values."""
        for name in row:
            if name.startswith("loss"):
                self.seen.setdefault(name)

    def row(self, last: dict[str, Any]) -> dict[str, Any]:
        """The metrics line at `last` (the interval's last step row: its step, lr, speed and evaluation),
        with the interval's mean losses; the interval starts again."""
        means = {name: round(self.sums[name] / self.counts[name], 6) if name in self.counts else None
                 for name in self.seen}
        self.sums, self.counts = {}, {}
        return {"step": last["step"], **means, **{k: v for k, v in last.items() if k != "step" and k not in means}}


def _read_run_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is corrupt: delete it to continue this run, or use --overwrite") from None
    return record if isinstance(record, dict) else None


class StepStream:
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
