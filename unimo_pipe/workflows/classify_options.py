"""Options of `finetune-classifier` and `evaluate-classifier` (apart from the recipe so the CLI can list them
without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option
from unimo_pipe.workflows.pretrain_options import TrainingLoopOptions


@dataclass
class ClassifierOptions(TrainingLoopOptions):
    model: Path | None = option(None, help="the pretrained model (pretrain's or finetune's OUT/model)",
                                required=True, must_exist=True, metavar="DIR")
    train: Path | None = option(None, help='labelled data: JSONL {"image", "text", "label"} per line ("image" '
                                'left out for text tasks), or a GLUE-style TSV (sentence, label)', required=True,
                                must_exist=True, metavar="FILE")
    eval: Path | None = option(None, help="labelled data to report accuracy on (default: the first training "
                               "examples)", must_exist=True, metavar="FILE")
    features: Path | None = option(None, help="region features of the images (extract-regions or "
                                   "import-features output); image-text tasks only", must_exist=True, metavar="DIR")
    eval_examples: int = option(1000, help="examples used for accuracy without --eval (0: all)", minimum=0)
    regression: bool = option(False, help="numeric labels (STS-B's similarity, a TSV with sentence1, sentence2 and "
                              "score columns): a regression head trained with mean squared error, scored by Pearson "
                              "and Spearman correlation")


@dataclass
class EvaluateClassifierOptions:
    model: Path | None = option(None, help="a saved classifier (finetune-classifier's OUT/model)", required=True,
                                must_exist=True, metavar="DIR")
    data: Path | None = option(None, help="labelled data, as finetune-classifier's --train", required=True,
                               must_exist=True, metavar="FILE")
    features: Path | None = option(None, help="region features of the images (image-text classifiers)",
                                   must_exist=True, metavar="DIR")
    tokenizer: str = option("", help="the tokenizer the model was trained with", required=True)
    out: Path | None = option(None, help="write the scores to this JSON file too", metavar="FILE")
    batch_size: int = option(64, help="examples scored at once", minimum=1)
    max_text_tokens: int = option(64, help="text length limit", minimum=8)
    max_regions: int = option(100, help="regions per image", minimum=1)
