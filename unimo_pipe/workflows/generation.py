"""The generation recipes: `finetune-caption` (image -> caption) and `finetune-seq2seq` (source text ->
target text), UNIMO's seq2seq fine-tuning, with `evaluate-caption` (COCO caption metrics) and
`evaluate-seq2seq` (ROUGE, BLEU).

    unimo-pipe finetune-caption --model runs/pretrain/model --captions dataset_coco.json --features feats/ \
        --tokenizer roberta-base --out runs/caption
    unimo-pipe generate --model runs/caption/model --captions dataset_coco.json --split test --features feats/ \
        --tokenizer roberta-base --beam-size 3 --out runs/captions-test
    unimo-pipe evaluate-caption --generations runs/captions-test --references dataset_coco.json --split test
    unimo-pipe finetune-seq2seq --model runs/pretrain/model --train squad_qg_train.jsonl --eval dev.jsonl \
        --tokenizer roberta-base --out runs/qg
    unimo-pipe evaluate-seq2seq --model runs/qg/model --data test.jsonl --tokenizer roberta-base --beam-size 5

Each recipe owns a TrainingLoop, as pretrain's does (DDP under torchrun, bf16 on GPU, accumulation,
checkpoints with exact resume, metrics.jsonl, TensorBoard); GenerationRecipe adds what both share: the
generator (models/generator.py: the whole target is the seq2seq target of its image or source, with label
smoothing) and validation every --eval-every steps and at the end, by generating (models/decoding.py,
with the --beam-size etc. search) for the held-out examples: CIDEr-D for captions, ROUGE-L and BLEU for
text. Outputs: OUT/metrics.jsonl, OUT/checkpoints/, OUT/caption_scores.json or OUT/seq2seq_scores.json,
OUT/model (the generator).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.training_data import batch_to_device
from unimo_pipe.workflows.generation_options import (
    CaptionOptions,
    EvaluateCaptionOptions,
    EvaluateSeq2SeqOptions,
    Seq2SeqOptions,
)
from unimo_pipe.workflows.training_loop import TrainingLoop

logger = logging.getLogger("unimo_pipe")


class GenerationRecipe:
    """What the caption and seq2seq recipes share: the tokenizer and its generation setup, the generator
    on the pretrained model, the label-smoothed loss on the data stream, validation every --eval-every steps
    and the final scores. A recipe adds its data (`_setup_data`), `region_dim`, `evaluate` and
    `validation`."""

    command: str
    scores_file: str
    task: str

    def __init__(self, options):
        self.options = options
        self.truncated_sources = 0

    def setup(self) -> None:
        from unimo_pipe.models.generator import GenerationSetup
        from unimo_pipe.models.tokenizers import load_tokenizer
        from unimo_pipe.pipeline.generation_data import GenerationCollator

        o = self.options
        self.loop = TrainingLoop(o, name=self.command)
        self.tokenizer = load_tokenizer(o.tokenizer, of="--tokenizer")
        self.generation_setup = GenerationSetup.for_tokenizer(
            self.tokenizer, task=self.task, max_source_tokens=getattr(o, "max_source_tokens", 2),
            max_target_tokens=o.max_text_tokens)
        self.collator = GenerationCollator(self.tokenizer, self.generation_setup)
        self.stream = self._setup_data()
        self._setup_model()
        # a text generator leaves the region embedders unused, which DDP must be told
        self.loop.prepare(self.module, find_unused_parameters=self.region_dim() is None)

    def _setup_data(self):
        raise NotImplementedError

    def region_dim(self) -> int | None:
        return None

    def _setup_model(self) -> None:
        from unimo_pipe.models.generator import Generator
        from unimo_pipe.models.unified import load_for_features

        o = self.options
        torch.manual_seed(o.seed)
        model = load_for_features(o.model, self.region_dim(), getattr(o, "features", None))
        self.module = Generator(model, self.generation_setup).to(self.loop.device)
        self.module.check_lengths(max(o.max_text_tokens, o.max_new_tokens))
        if o.compile:
            model.compile()

    def train(self) -> list[dict[str, Any]]:
        """Train to --steps, then score the held-out examples and save OUT/model."""
        history = self.loop.train(self._micro_batch_losses, evaluate=self.validation)
        scores = self.evaluate()
        if self.truncated_sources:
            scores["truncated_training_sources"] = self.truncated_sources
        self.loop.finish(history, scores, scores_file=self.scores_file, save_model=self.module.save_pretrained)
        return history

    def _micro_batch_losses(self, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
        batch = next(self.stream)
        self.truncated_sources += batch["truncated_sources"]
        batch = batch_to_device(batch, self.loop.device)
        with self.loop.autocast():
            losses = self.loop.trainer(batch, label_smoothing=self.options.label_smoothing)
        return losses, len(batch["index"])

    def validation(self) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        raise NotImplementedError

    def generate_all(self, dataset) -> list[tuple[str, float]]:
        return generate_texts(self.module, self.tokenizer, dataset, self.collator, self.options.search_options(),
                              batch_size=self.options.batch_size, device=self.loop.device)

    def cleanup(self) -> None:
        self.loop.close()


class CaptionRecipe(GenerationRecipe):
    command = "finetune-caption"
    scores_file = "caption_scores.json"
    task = "caption"

    def _setup_data(self):
        from unimo_pipe.pipeline.feature_store import open_feature_dir
        from unimo_pipe.pipeline.generation_data import CaptionDataset, CaptionSet

        o: CaptionOptions = self.options
        keys = open_feature_dir(o.features).name2nbb
        train = CaptionSet.load(o.captions, image_keys=keys, splits=tuple(o.train_splits))
        _log_left_out(train)
        images, captions = zip(*train.pairs(), strict=True)
        self.dataset = CaptionDataset(list(images), list(captions), o.features, max_regions=o.max_regions)
        self.held_out = self._held_out(train, keys)
        _log_left_out(self.held_out)
        lengths = np.asarray([len(c.split()) for c in captions], dtype=np.int32) + self.dataset.box_counts()
        return self.loop.add_stream("caption", self.dataset, lengths, self.collator)

    def _held_out(self, train, keys):
        """Validation references: --eval-captions, else --eval-split of --captions, else the training images."""
        from unimo_pipe.pipeline.generation_data import CaptionSet

        o = self.options
        if o.eval_captions is not None:
            return CaptionSet.load(o.eval_captions, image_keys=keys, splits=(o.eval_split,))
        if _has_split(o.captions, o.eval_split):
            return CaptionSet.load(o.captions, image_keys=keys, splits=(o.eval_split,))
        logger.warning("%s: no --eval-captions and no %r split in %s: validating on training images",
                       self.command, o.eval_split, o.captions)
        return train

    def region_dim(self) -> int:
        return self.dataset[0]["features"].shape[1]

    def validation(self) -> dict[str, float]:
        return {"val_cider_d": self.evaluate(metrics=("CIDEr-D",))["CIDEr-D"]}

    def evaluate(self, metrics: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The caption metrics of the first --eval-images held-out images."""
        from unimo_pipe.models.caption_metrics import ALL_METRICS, caption_scores
        from unimo_pipe.pipeline.generation_data import CaptionDataset

        o = self.options
        images = self.held_out.images[: o.eval_images or None]
        generated = self.generate_all(CaptionDataset(images, None, o.features, max_regions=o.max_regions))
        texts = {image: text for image, (text, _) in zip(images, generated, strict=True)}
        totals, _ = caption_scores(texts, self.held_out.references, metrics=metrics or ALL_METRICS,
                                   use_java=None if o.java else False)
        return totals


class Seq2SeqRecipe(GenerationRecipe):
    command = "finetune-seq2seq"
    scores_file = "seq2seq_scores.json"
    task = "text"

    def _setup_data(self):
        from unimo_pipe.pipeline.generation_data import TextPairDataset, TextPairs

        o: Seq2SeqOptions = self.options
        train = TextPairs.load(o.train)
        _log_left_out(train)
        self.held_out = train
        if o.eval is not None:
            self.held_out = TextPairs.load(o.eval)
            _log_left_out(self.held_out)
        dataset = TextPairDataset(train)
        return self.loop.add_stream("text", dataset, dataset.lengths(), self.collator)

    def validation(self) -> dict[str, float]:
        scores = self.evaluate()
        return {"val_rouge_l": scores["ROUGE-L"], "val_bleu": scores["BLEU"]}

    def evaluate(self) -> dict[str, Any]:
        """ROUGE and BLEU of the first --eval-examples held-out examples."""
        from unimo_pipe.models.text_metrics import text_scores
        from unimo_pipe.pipeline.generation_data import TextPairDataset

        count = min(len(self.held_out), self.options.eval_examples or len(self.held_out))
        generated = self.generate_all(TextPairDataset(self.held_out, with_targets=False, count=count))
        return text_scores([text for text, _ in generated], self.held_out.targets[:count])[0]


def generate_texts(generator, tokenizer, dataset, collator, search, *, batch_size: int, device: torch.device
                   ) -> list[tuple[str, float]]:
    """(text, score) of every example of a dataset (pipeline/generation_data.py), in order, in batches; the
    generator is put back in training mode if it was in it."""
    from unimo_pipe.models.decoding import generate

    was_training = generator.training
    results = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = batch_to_device(collator(items), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            hypotheses = generate(generator, batch, search)
        results += [(tokenizer.decode(h.tokens, skip_special_tokens=True).strip(), h.score) for h in hypotheses]
    generator.train(was_training)
    return results


def evaluate_seq2seq(options: EvaluateSeq2SeqOptions) -> dict[str, Any]:
    """Generate a target for every usable example of --data with a saved generator; ROUGE and BLEU against
    the examples' targets."""
    from unimo_pipe.models.generator import Generator
    from unimo_pipe.models.text_metrics import text_scores
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.pipeline.generation_data import GenerationCollator, TextPairDataset, TextPairs
    from unimo_pipe.pipeline.jsonl import atomic_write, write_json_atomic

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = Generator.from_pretrained(options.model).to(device)
    if generator.with_image:
        raise UserError(f"{options.model} captions images: evaluate it with generate and evaluate-caption")
    generator.check_lengths(options.max_new_tokens)
    tokenizer = load_tokenizer(options.tokenizer, of="--tokenizer")
    examples = TextPairs.load(options.data)
    collator = GenerationCollator(tokenizer, generator.setup)
    dataset = TextPairDataset(examples, with_targets=False)
    generated = generate_texts(generator, tokenizer, dataset, collator, options.search_options(),
                               batch_size=options.batch_size, device=device)
    totals, per_example = text_scores([text for text, _ in generated], examples.targets)
    totals["left_out"] = dict(examples.problems)
    totals["truncated_sources"] = collator.truncated
    if options.out is not None:
        write_json_atomic(options.out, totals)
        with atomic_write(options.out.with_name(options.out.stem + ".per_example.jsonl")) as f:
            f.writelines(json.dumps({"id": i, "source": s, "text": text, "target": t, **scores}) + "\n"
                         for i, s, t, (text, _), scores in zip(examples.ids, examples.sources, examples.targets,
                                                               generated, per_example, strict=True))
    return totals


def evaluate_captions(options: EvaluateCaptionOptions) -> dict[str, Any]:
    """The COCO caption metrics of generated captions against every reference of their images. Generated
    images without references, and rows without an image or text, are counted and left out."""
    from unimo_pipe.models.caption_metrics import PYTHON, caption_scores, java_available
    from unimo_pipe.pipeline.generation_data import CaptionSet
    from unimo_pipe.pipeline.jsonl import atomic_write, write_json_atomic

    predictions, problems = read_generations(options.generations)
    references = CaptionSet.load(options.references, image_keys=predictions,
                                 splits=(options.split,) if options.split else (), store="the generations")
    for image in [i for i in predictions if i not in references.references]:
        problems["no_references"] = problems.get("no_references", 0) + 1
        del predictions[image]
    use_java = options.java and java_available()
    if options.java and not use_java:
        logger.warning("evaluate-caption: no Java runtime (java not on PATH): METEOR is left out and the "
                       "other metrics use a %s", PYTHON.split(" (")[0] + " tokenisation")
    totals, per_image = caption_scores(predictions, references.references, use_java=use_java)
    totals["left_out"] = {**problems, **dict(references.problems)}
    if options.out is not None:
        write_json_atomic(options.out, totals)
        with atomic_write(per_image_path(options.out)) as f:
            f.writelines(json.dumps({"image": image, "text": predictions[image], **scores}) + "\n"
                         for image, scores in per_image.items())
    return totals


def per_image_path(out: Path) -> Path:
    return out.with_name(out.stem + ".per_image.jsonl")


def read_generations(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """{image: text} of generate's output folder or a JSONL file, and the counts of rows left out."""
    from unimo_pipe.pipeline.formats import GENERATIONS_FILE
    from unimo_pipe.pipeline.jsonl import iter_jsonl
    from unimo_pipe.pipeline.outputs import iter_output_rows

    rows = (iter_output_rows(path, GENERATIONS_FILE, required=()) if path.is_dir()
            else ((f"{path}:{n}", row, problem) for n, row, problem in iter_jsonl(path)))
    predictions: dict[str, str] = {}
    problems: dict[str, int] = {}
    for _, row, problem in rows:
        if not problem and not (isinstance(row, dict) and isinstance(row.get("image"), str)
                                and isinstance(row.get("text"), str)):
            problem = "malformed_row"
        if problem:
            problems[problem] = problems.get(problem, 0) + 1
        else:
            predictions[row["image"]] = row["text"]
    if not predictions:
        raise UserError(f"{path} holds no generated caption: pass generate's --out folder or a JSONL file of "
                        '{"image", "text"} rows')
    return predictions, problems


def _has_split(path: Path, split: str) -> bool:
    from unimo_pipe.pipeline.readers import iter_captions

    return any(r.value.get("split") == split for r in iter_captions(path) if not r.error)


def _log_left_out(examples) -> None:
    if examples.problems:
        logger.warning("%s: left out %s", examples.path, examples.describe_left_out())
