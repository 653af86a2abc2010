"""Options of `finetune-caption`, `evaluate-caption`, `finetune-seq2seq` and `evaluate-seq2seq` (apart from
the recipes so the CLI can list them without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.models.decoding_options import DecodingOptions
from unimo_pipe.pipeline.config import option
from unimo_pipe.workflows.pretrain_options import TrainingLoopOptions

_CAPTION_FILES = ("Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json), COCO captions JSON, JSONL "
                  '{"id", "image", "caption", "split"?} or TSV')
_TEXT_PAIR_FILES = 'JSONL {"id"?, "source", "target"} or a TSV with a header naming source and target columns'


@dataclass
class CaptionOptions(DecodingOptions, TrainingLoopOptions):
    model: Path | None = option(None, help="the pretrained model (pretrain's or finetune's OUT/model)",
                                required=True, must_exist=True, metavar="DIR")
    captions: Path | None = option(None, help=f"training captions: {_CAPTION_FILES}", required=True,
                                   must_exist=True, metavar="FILE")
    features: Path | None = option(None, help="region features of the images (extract-regions or import-features "
                                   "output)", required=True, must_exist=True, metavar="DIR")
    train_splits: list[str] = option(["train", "restval"], help="splits trained on, in a file that has splits "
                                     "(Karpathy's train + restval)")
    eval_captions: Path | None = option(None, help="held-out captions for validation (default: --eval-split of "
                                        "--captions, else its first training images)", must_exist=True,
                                        metavar="FILE")
    eval_split: str = option("val", help="the split validated on, in a file that has splits")
    eval_images: int = option(100, help="images captioned for validation CIDEr-D (0: all)", minimum=0)
    label_smoothing: float = option(0.1, help="label smoothing of the caption cross-entropy", minimum=0.0,
                                    maximum=0.99)
    lr: float = option(5e-5, help="peak learning rate", minimum=0.0)
    java: bool = option(True, help="score with Stanford's PTB tokenizer and METEOR where a Java runtime is "
                        "installed (off: a Python tokenisation and no METEOR, quicker)", affects_output=False)


@dataclass
class EvaluateCaptionOptions:
    generations: Path | None = option(None, help="generated captions: generate's --out folder, or a JSONL file "
                                      'of {"image", "text"}', required=True, must_exist=True, metavar="PATH")
    references: Path | None = option(None, help=f"reference captions: {_CAPTION_FILES}", required=True,
                                     must_exist=True, metavar="FILE")
    split: str = option("", help="only this split's references, in a file that has splits (e.g. test)")
    out: Path | None = option(None, help="write the totals to this JSON file, and per-image scores beside it "
                              "(FILE with .per_image.jsonl)", metavar="FILE")
    java: bool = option(True, help="score with Stanford's PTB tokenizer and METEOR where a Java runtime is "
                        "installed (off: a Python tokenisation and no METEOR, quicker)", affects_output=False)


@dataclass
class Seq2SeqOptions(DecodingOptions, TrainingLoopOptions):
    model: Path | None = option(None, help="the pretrained model (pretrain's or finetune's OUT/model)",
                                required=True, must_exist=True, metavar="DIR")
    train: Path | None = option(None, help=f"training examples: {_TEXT_PAIR_FILES}", required=True, must_exist=True,
                                metavar="FILE")
    eval: Path | None = option(None, help="held-out examples for ROUGE and BLEU (default: the first training "
                               "examples)", must_exist=True, metavar="FILE")
    eval_examples: int = option(100, help="examples generated for validation (0: all)", minimum=0)
    label_smoothing: float = option(0.1, help="label smoothing of the target cross-entropy", minimum=0.0,
                                    maximum=0.99)
    max_source_tokens: int = option(256, help="source tokens at most (longer sources are cut and counted; "
                                    "the model's positions bound source + target)", minimum=4)
    lr: float = option(5e-5, help="peak learning rate", minimum=0.0)


@dataclass
class EvaluateSeq2SeqOptions(DecodingOptions):
    model: Path | None = option(None, help="a fine-tuned generator (finetune-seq2seq's OUT/model)", required=True,
                                must_exist=True, metavar="DIR")
    data: Path | None = option(None, help=f"examples to score: {_TEXT_PAIR_FILES}", required=True, must_exist=True,
                               metavar="FILE")
    tokenizer: str = option("", help="the tokenizer the model was trained with", required=True)
    out: Path | None = option(None, help="write the totals to this JSON file, and each example's output and "
                              "scores beside it (FILE with .per_example.jsonl)", metavar="FILE")
    batch_size: int = option(32, help="examples decoded at once", minimum=1)
