"""`finetune-classifier` and `evaluate-classifier`: image-text classification (visual entailment, VQA as
answer classification, ...) and text classification (GLUE-style TSV, e.g. SST-2) from a pretrained unified
model.

    unimo-pipe finetune-classifier --model runs/pretrain/model --train snli_ve_train.jsonl \
        --eval snli_ve_dev.jsonl --features feats/ --tokenizer roberta-base --out runs/snli-ve
    unimo-pipe evaluate-classifier --model runs/snli-ve/model --data snli_ve_test.jsonl --features feats/ \
        --tokenizer roberta-base

The recipe owns a TrainingLoop, as pretrain's does (DDP under torchrun, bf16 on GPU, accumulation,
checkpoints with exact resume, metrics.jsonl, TensorBoard); it adds the labelled data, the classifier and
its accuracy. The classes are
the training file's labels, sorted, and are saved with the model (classifier.json).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.training_data import batch_to_device
from unimo_pipe.workflows.classify_options import ClassifierOptions, EvaluateClassifierOptions
from unimo_pipe.workflows.training_loop import TrainingLoop

logger = logging.getLogger("unimo_pipe")


class ClassifierRecipe:
    command = "finetune-classifier"
    scores_file = "classification.json"

    def __init__(self, options: ClassifierOptions):
        self.options = options

    # -- setup --

    def setup(self) -> None:
        self.loop = TrainingLoop(self.options, name=self.command)
        self._setup_data()
        self._setup_model()
        self.loop.prepare(self.module)

    def _setup_data(self) -> None:
        from unimo_pipe.models.tokenizers import load_tokenizer
        from unimo_pipe.pipeline.labelled_data import LabelledDataset, LabelledExamples, is_text_only
        from unimo_pipe.pipeline.training_data import Collator

        o = self.options
        self.tokenizer = load_tokenizer(o.tokenizer, of="--tokenizer")
        self.collator = Collator(self.tokenizer, max_text_tokens=o.max_text_tokens)
        self.with_image = not is_text_only(o.train)
        features, image_keys = _features(o.features, with_image=self.with_image, data=o.train)
        kinds = {"regression": o.regression, "pair_separator": _pair_separator(self.tokenizer)}
        train = LabelledExamples.load(o.train, image_keys=image_keys, **kinds)
        _log_left_out(train)
        self.labels = train.labels
        self.dataset = LabelledDataset(train, features, max_regions=o.max_regions)
        self.eval_dataset = self.dataset
        if o.eval is not None:
            held_out = LabelledExamples.load(o.eval, image_keys=image_keys, labels=train.labels, **kinds)
            _log_left_out(held_out)
            self.eval_dataset = LabelledDataset(held_out, features, max_regions=o.max_regions)
        self.pairs = self.loop.add_stream("pair", self.dataset, train.text_lengths + self.dataset.box_counts(),
                                          self.collator.labelled)

    def _setup_model(self) -> None:
        from unimo_pipe.models.classifier import PairClassifier
        from unimo_pipe.models.unified import load_for_features

        o = self.options
        torch.manual_seed(o.seed)
        region_dim = self.dataset[0]["features"].shape[1] if self.with_image else None
        model = load_for_features(o.model, region_dim, o.features)
        self.module = PairClassifier(model, self.labels, with_image=self.with_image,
                                     regression=o.regression).to(self.loop.device)
        if o.compile:
            model.compile()

    # -- train --

    def train(self) -> list[dict[str, Any]]:
        """Train to --steps, then score accuracy and save OUT/model; the metric rows of the steps this run made."""
        history = self.loop.train(self._micro_batch_losses, evaluate=self.evaluate)
        self.loop.finish(history, self.evaluate(), scores_file=self.scores_file,
                         save_model=self.module.save_pretrained)
        return history

    def _micro_batch_losses(self, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
        """The losses of the next labelled micro-batch, and how many examples it held."""
        batch = batch_to_device(next(self.pairs), self.loop.device)
        with self.loop.autocast():
            losses = self.loop.trainer(batch)
        return losses, len(batch["index"])

    def evaluate(self) -> dict[str, float]:
        """Accuracy on --eval, or on the first --eval-examples training examples."""
        count = len(self.eval_dataset)
        if self.options.eval is None and self.options.eval_examples:
            count = min(count, self.options.eval_examples)
        return classification_scores(self.module, self.eval_dataset, self.collator, count=count,
                                     batch_size=self.options.batch_size, device=self.loop.device)

    def cleanup(self) -> None:
        self.loop.close()


@torch.no_grad()
def classification_scores(classifier, dataset, collator, *, count: int, batch_size: int, device: torch.device
                          ) -> dict[str, Any]:
    """Accuracy over the first `count` examples, beside the share of the most frequent class (what always
    answering it would score)."""
    was_training = classifier.training
    classifier.eval()
    if classifier.regression:
        result = regression_scores(classifier, dataset, collator, count=count, batch_size=batch_size, device=device)
        classifier.train(was_training)
        return result
    correct, counts = 0, torch.zeros(len(classifier.labels), dtype=torch.long)
    for start in range(0, count, batch_size):
        batch = batch_to_device(collator.labelled([dataset[i] for i in range(start, min(start + batch_size, count))]),
                                device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            predicted = classifier.logits(batch).argmax(-1)
        correct += int((predicted == batch["labels"]).sum())
        known = batch["labels"][batch["labels"] >= 0].cpu()  # -1: a label the model does not know, never right
        counts += torch.bincount(known, minlength=len(counts))
    classifier.train(was_training)
    return {"accuracy": round(correct / count, 4), "majority_class_accuracy": round(int(counts.max()) / count, 4),
            "examples": count}


def regression_scores(regressor, dataset, collator, *, count: int, batch_size: int, device: torch.device
                      ) -> dict[str, Any]:
    """Pearson and Spearman correlation (x 100, as GLUE reports STS-B) of the predictions of the first
    `count` examples with their labels."""
    from scipy.stats import pearsonr, spearmanr

    predicted, labels = [], []
    for start in range(0, count, batch_size):
        batch = batch_to_device(collator.labelled([dataset[i] for i in range(start, min(start + batch_size, count))]),
                                device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            predicted += regressor.logits(batch).squeeze(-1).float().tolist()
        labels += batch["labels"].float().tolist()
    constant = len(set(predicted)) < 2 or len(set(labels)) < 2  # correlation undefined: scored 0
    return {"pearson": 0.0 if constant else round(100 * float(pearsonr(predicted, labels)[0]), 4),
            "spearman": 0.0 if constant else round(100 * float(spearmanr(predicted, labels)[0]), 4),
            "examples": count}


def _pair_separator(tokenizer) -> str:
    """What joins a sentence pair into one text: the tokenizer's separator token, spaced."""
    return f" {tokenizer.sep_token or tokenizer.eos_token or ''} ".replace("  ", " ")


def evaluate_classifier(options: EvaluateClassifierOptions) -> dict[str, Any]:
    from unimo_pipe.models.classifier import PairClassifier
    from unimo_pipe.models.tokenizers import load_tokenizer
    from unimo_pipe.pipeline.labelled_data import LabelledDataset, LabelledExamples
    from unimo_pipe.pipeline.training_data import Collator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier = PairClassifier.from_pretrained(options.model).to(device)
    tokenizer = load_tokenizer(options.tokenizer, of="--tokenizer")
    features, image_keys = _features(options.features, with_image=classifier.with_image, data=options.data)
    examples = LabelledExamples.load(options.data, image_keys=image_keys, labels=classifier.labels,
                                     regression=classifier.regression, pair_separator=_pair_separator(tokenizer))
    dataset = LabelledDataset(examples, features, max_regions=options.max_regions)
    result = classification_scores(classifier, dataset, Collator(tokenizer, max_text_tokens=options.max_text_tokens),
                                   count=len(dataset), batch_size=options.batch_size, device=device)
    result["left_out"] = dict(examples.problems)
    if options.out is not None:
        from unimo_pipe.pipeline.jsonl import write_json_atomic

        write_json_atomic(options.out, result)
    return result


def _features(features: Path | None, *, with_image: bool, data: Path) -> tuple[Path | None, Any]:
    """The feature folder an image-text task needs and its image keys (None, None for a text task)."""
    from unimo_pipe.pipeline.feature_store import open_feature_dir

    if not with_image:
        return None, None
    if features is None:
        raise UserError(f"{data} pairs texts with images: pass --features DIR (the extract-regions or "
                        "import-features output holding them)")
    return features, open_feature_dir(features).name2nbb


def _log_left_out(examples) -> None:
    if examples.problems:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(examples.problems.items()))
        logger.warning("%s: %d usable examples; left out %s", examples.path, len(examples), reasons)
