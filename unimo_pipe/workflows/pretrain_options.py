"""Options of the pretraining recipe (kept apart from the recipe so the CLI can list them without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option


@dataclass
class TrainingLoopOptions:
    """What the training loop takes, whatever the recipe (pretrain, finetune, finetune-classifier)."""

    tokenizer: str = option("", help="transformers tokenizer (the model's): local folder or cached hub id",
                            required=True)
    out: Path | None = option(None, help="output folder", required=True, affects_output=False, metavar="DIR")
    overwrite: bool = option(False, help="start again in an --out that holds a run made with other options "
                             "(its checkpoints, metrics and model are removed)", affects_output=False)
    resume_from: Path | None = option(None, help="start from the weights of this checkpoint (a step-*.pt of a "
                                      "run's OUT/checkpoints), with a new optimizer and schedule", must_exist=True,
                                      metavar="FILE")
    steps: int = option(1000, help="optimizer steps", minimum=1)
    batch_size: int = option(32, help="examples per rank per micro-batch", minimum=1)
    grad_accum: int = option(1, help="micro-batches per optimizer step", minimum=1)
    lr: float = option(5e-5, help="peak learning rate (UNIMO: 5e-5)", minimum=0.0)
    warmup_steps: int = option(100, help="linear warmup, then linear decay to 0", minimum=0)
    weight_decay: float = option(0.01, help="AdamW weight decay", minimum=0.0)
    clip: float = option(1.0, help="gradient norm clipping (0: off)", minimum=0.0)
    max_text_tokens: int = option(64, help="text length limit (UNIMO: 512)", minimum=8)
    max_regions: int = option(100, help="regions per image", minimum=1)
    log_every: int = option(10, help="steps between metric lines", minimum=1, affects_output=False)
    checkpoint_every: int = option(100, help="steps between checkpoints", minimum=1, affects_output=False)
    eval_every: int = option(0, help="steps between evaluations (0: at the end only)", minimum=0,
                             affects_output=False)
    seed: int = option(0, help="seed of everything random")
    workers: int = option(2, help="DataLoader workers", minimum=0, affects_output=False)
    precision: str = option("auto", help="autocast of the training steps: auto (bf16 on GPU, fp32 on CPU), bf16 "
                            "(on CPU too, where torch supports it) or fp32", choices=("auto", "bf16", "fp32"))
    compile: bool = option(False, help="torch.compile the transformer layers (faster steps on GPU after a "
                           "warm-up of a minute or two; checkpoints are unchanged)", affects_output=False)


@dataclass
class PretrainOptions(TrainingLoopOptions):
    shards: Path | None = option(None, help="training shards (`unimo-pipe shard` --out)", required=True,
                                 must_exist=True, metavar="DIR")
    init: str = option("", help="encoder to start from (hub id or folder, e.g. roberta-base); empty: a tiny "
                       "random encoder (tests and demos only)")
    model: Path | None = option(None, help="start from a saved unimo-pipe model instead (pretrain's OUT/model)",
                                must_exist=True, metavar="DIR")
    retrieval_loss: str = option("cmcl", help="the cross-modal loss: cmcl (UNIMO's contrastive loss) or triplet "
                                 "(VSE++'s hardest-negative hinge, as retrieval fine-tuning often uses); "
                                 "--weight-cmcl weighs either", choices=("cmcl", "triplet"))
    margin: float = option(0.2, help="triplet margin", minimum=0.0)
    temperature: float = option(0.07, help="CMCL temperature tau", minimum=1e-4)
    in_batch_negatives: bool = option(True, help="also use the other pairs of the batch as CMCL negatives "
                                      "(--no-in-batch-negatives: the paper's formula, which teaches a tiny encoder "
                                      "no retrieval in benchmarks/quality.py)")
    weight_cmcl: float = option(1.0, help="weight of CMCL (0: off)", minimum=0.0)
    weight_language: float = option(1.0, help="weight of masked / seq2seq language modelling (0: off)", minimum=0.0)
    weight_visual: float = option(1.0, help="weight of masked region modelling (0: off)", minimum=0.0)
    weight_matching: float = option(0.0, help="weight of image-text matching (UNITER's ITM, Unicoder-VL's VLM; "
                                    "UNIMO: off)", minimum=0.0)
    weight_classification: float = option(0.0, help="weight of masked region classification against the "
                                          "detector's top class (Unicoder-VL's MOC, UNITER's MRC; UNIMO: off)",
                                          minimum=0.0)
    weight_alignment: float = option(0.0, help="weight of word-region alignment by optimal transport (UNITER's "
                                     "WRA, which used 0.1; UNIMO: off)", minimum=0.0)
    cmcl_first: float = option(0.5, help="fraction of --steps at the start that train the cross-modal loss "
                               "alone (when --weight-cmcl is not 0), the other objectives joining after it (0: all "
                               "from the first step, where a random encoder's CMCL gradient is ~300x smaller than "
                               "MLM's and never catches up; benchmarks/quality.py)", minimum=0.0, maximum=1.0)
    one_task_per_step: bool = option(False, help="UNITER's schedule: each micro-batch trains one task (CMCL, "
                                     "language, regions, matching), drawn with probability proportional to its "
                                     "weight; off: every enabled objective, weighted, every step")
    single_modal: bool = option(True, help="also learn from the shards' text-only (language) and image-only "
                                "(region) data, one batch of each per step")
    positives: int = option(1, help="positives sampled per pair per step", minimum=0)
    negatives: int = option(4, help="hard negatives sampled per pair per step", minimum=0)
    retrieved_images: int = option(1, help="retrieved images sampled per pair per step", minimum=0)
    retrieved_texts: int = option(1, help="retrieved texts sampled per pair per step", minimum=0)
    tiny_hidden: int = option(32, help="hidden size of the tiny random encoder (when --init is empty)", minimum=8)
    dropout: float | None = option(None, help="dropout of the encoder and the region embedding (default: 0 for "
                                   "the tiny random encoder, which learns nothing at 0.1; the encoder's own, "
                                   "e.g. roberta-base's 0.1, for --init and --model)", minimum=0.0, maximum=0.9)
    eval_pairs: int = option(100, help="pairs used for retrieval R@1/5/10", minimum=2)
    eval_shards: Path | None = option(None, help="held-out shards to evaluate on (default: the first training "
                                      "pairs)", must_exist=True, metavar="DIR")


@dataclass
class FinetuneOptions(PretrainOptions):
    """`finetune`: image-text retrieval from a pretrained model: CMCL with the batch's other pairs as
    negatives (plus the shards' hard negatives and positives, if any), no language or region modelling."""

    model: Path | None = option(None, help="the pretrained model (pretrain's OUT/model)", required=True,
                                must_exist=True, metavar="DIR")
    lr: float = option(2e-5, help="peak learning rate", minimum=0.0)
    steps: int = option(500, help="optimizer steps", minimum=1)
    warmup_steps: int = option(50, help="linear warmup, then linear decay to 0", minimum=0)
    in_batch_negatives: bool = option(True, help="use the other pairs of the batch as negatives")
    weight_language: float = option(0.0, help="weight of masked / seq2seq language modelling", minimum=0.0)
    weight_visual: float = option(0.0, help="weight of masked region modelling", minimum=0.0)
    single_modal: bool = option(False, help="also learn from text-only and image-only data")
