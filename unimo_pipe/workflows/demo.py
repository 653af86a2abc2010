"""The demo recipe: run the shipped demo workflow on the bundled sample data and explain the result."""

from __future__ import annotations

import time
from pathlib import Path

from unimo_pipe.pipeline.workflow import format_summary, load_config_file, run_steps
from unimo_pipe.workflows import demo_data_dir, shipped_config
from unimo_pipe.workflows.tiny_models import TINY_DETECTOR_FILE, make_tiny_models


def run_demo(out: Path) -> None:
    started = time.perf_counter()
    out = out.resolve()
    models = out / "models"
    if not (models / TINY_DETECTOR_FILE).is_file():
        make_tiny_models(models)
    variables = {"out": str(out), "data": str(demo_data_dir()), "models": str(models)}
    steps = load_config_file(shipped_config("demo"), variables=variables)
    results = run_steps(steps)
    print(format_summary(results))
    print()
    _pretrain_briefly(out, models)
    _classify_briefly(out, models)
    _caption_briefly(out, models)
    print()
    print("Models used by this demo:")
    notes = [note for step in steps for note in step.stage.models_used(step.options)]
    notes.append("pretrain, finetune-classifier: tiny RANDOM encoder and a BPE tokenizer trained on the demo corpus "
                 "(smoke-test quality)")
    notes.append("finetune-caption, generate: a generator fine-tuned briefly from that encoder (smoke-test quality)")
    for note in notes or ["none: the stages in this demo so far only read and clean data"]:
        print(f"  - {note}")
    print()
    print(f"Outputs are under {out} (one folder per stage; see each folder's summary.json).")
    print(f"Training shards: unimo-pipe inspect {out / 'shards'}")
    print(f"Demo finished in {time.perf_counter() - started:.1f} s; rerun it and every finished shard is skipped.")
    _write_report(out)


def _write_report(out: Path) -> None:
    """The demo's outputs as one HTML page (`unimo-pipe report`), its path printed last."""
    from unimo_pipe.workflows.report import write_report

    report = write_report([out], out / "report.html")
    print(f"Report of what the demo made: {report.path} (open it in a browser)")


def _pretrain_briefly(out: Path, models: Path) -> None:
    """A few steps of the real recipe on the demo's shards: shows the loop, metrics and checkpoints work."""
    from unimo_pipe.pipeline.config import Source, resolve_options
    from unimo_pipe.workflows.pretrain import PretrainRecipe
    from unimo_pipe.workflows.pretrain_options import PretrainOptions
    from unimo_pipe.workflows.training_loop import run_recipe

    options = resolve_options(PretrainOptions, [Source("demo", {
        "shards": str(out / "shards"), "tokenizer": str(models / "tokenizer-tiny"), "out": str(out / "pretrain"),
        "steps": 20, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 10,
        "workers": 0, "in_batch_negatives": True})])
    history = run_recipe(PretrainRecipe(options))
    if not history:
        print(f"pretrain: already finished ({options.steps} steps) in {out / 'pretrain'}")
        return
    last = history[-1]
    losses = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("loss"))
    print(f"pretrain: {len(history)} steps; last step: {losses}; zero-shot image retrieval R@1 "
          f"{last['zero_shot_ir_r1']:.3f} (chance {last['zero_shot_chance_r1']:.3f}) -> {out / 'pretrain'}")


def _classify_briefly(out: Path, models: Path) -> None:
    """A few steps of classification fine-tuning from the pretrained model, on a task made from the demo
    pairs: does this caption describe this image ("match") or another one ("mismatch")?"""
    from unimo_pipe.pipeline.config import Source, resolve_options
    from unimo_pipe.pipeline.formats import PAIRS_FILE
    from unimo_pipe.pipeline.jsonl import write_jsonl
    from unimo_pipe.pipeline.outputs import iter_output_jsonl
    from unimo_pipe.workflows.classify import ClassifierRecipe
    from unimo_pipe.workflows.classify_options import ClassifierOptions
    from unimo_pipe.workflows.training_loop import run_recipe

    pairs = list(iter_output_jsonl(out / "pairs", PAIRS_FILE))
    images = sorted({p["image"] for p in pairs})
    labelled = out / "classify" / "matches.jsonl"
    other = {image: [i for i in images if i != image] for image in images}
    write_jsonl(labelled, [row for n, p in enumerate(pairs) for row in (
        {"image": p["image"], "text": p["caption"], "label": "match"},
        {"image": other[p["image"]][n % len(other[p["image"]])], "text": p["caption"], "label": "mismatch"})])
    options = resolve_options(ClassifierOptions, [Source("demo", {
        "model": str(out / "pretrain" / "model"), "train": str(labelled), "features": str(out / "features"),
        "tokenizer": str(models / "tokenizer-tiny"), "out": str(out / "classify"), "steps": 20, "batch_size": 8,
        "lr": 1e-3, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 10, "workers": 0})])
    history = run_recipe(ClassifierRecipe(options))
    if not history:
        print(f"finetune-classifier: already finished ({options.steps} steps) in {out / 'classify'}")
        return
    last = history[-1]
    print(f"finetune-classifier: {len(history)} steps on match / mismatch; accuracy {last['accuracy']:.3f} "
          f"(majority class {last['majority_class_accuracy']:.3f}) -> {out / 'classify'}")


def _caption_briefly(out: Path, models: Path) -> None:
    """A few steps of caption fine-tuning from the pretrained model on the demo captions, then `generate`
    (beam 2, cached decoding) and `evaluate-caption` on the same images: the generation half, end to end.
    Scored on a Python tokenisation (no Java) to keep the demo quick."""
    from unimo_pipe.pipeline.config import Source, resolve_options
    from unimo_pipe.pipeline.runner import run_stage
    from unimo_pipe.pipeline.stage import get_stage, resolve_stage_options
    from unimo_pipe.workflows.generation import CaptionRecipe, evaluate_captions
    from unimo_pipe.workflows.generation_options import CaptionOptions, EvaluateCaptionOptions
    from unimo_pipe.workflows.training_loop import run_recipe

    captions, tokenizer = demo_data_dir() / "captions.jsonl", str(models / "tokenizer-tiny")
    options = resolve_options(CaptionOptions, [Source("demo", {
        "model": str(out / "pretrain" / "model"), "captions": str(captions), "eval_captions": str(captions),
        "features": str(out / "features"),
        "tokenizer": tokenizer, "out": str(out / "caption"), "steps": 20, "batch_size": 8, "lr": 1e-3,
        "warmup_steps": 2, "log_every": 5, "checkpoint_every": 10, "workers": 0, "eval_images": 4,
        "max_new_tokens": 8, "java": False})])
    history = run_recipe(CaptionRecipe(options))
    if history:
        print(f"finetune-caption: {len(history)} steps; loss {history[-1]['loss']:.3f} -> {out / 'caption'}")
    else:
        print(f"finetune-caption: already finished ({options.steps} steps) in {out / 'caption'}")
    stage = get_stage("generate")
    run_stage(stage, resolve_stage_options(stage, [Source("demo", {
        "model": str(out / "caption" / "model"), "features": str(out / "features"), "tokenizer": tokenizer,
        "out": str(out / "captions"), "beam_size": 2, "max_new_tokens": 8, "device": "cpu"})]))
    scores = evaluate_captions(resolve_options(EvaluateCaptionOptions, [Source("demo", {
        "generations": str(out / "captions"), "references": str(captions), "java": False,
        "out": str(out / "captions" / "scores.json")})]))
    print(f"generate + evaluate-caption: {scores['images']} images captioned (beam 2); CIDEr-D "
          f"{scores['CIDEr-D']:.3f}, BLEU-4 {scores['BLEU-4']:.3f} -> {out / 'captions'}")
