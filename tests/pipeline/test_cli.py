from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import write_jsonl
from unimo_pipe.pipeline.cli import build_parser, command_table, main
from unimo_pipe.pipeline.config import option_specs
from unimo_pipe.pipeline.stage import STAGES


@pytest.fixture
def captions(tmp_path):
    return write_jsonl(tmp_path / "caps.jsonl", [{"id": str(i), "image": f"{i}.jpg", "caption": f"caption {i}"}
                                                 for i in range(6)])


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if "unimo-pipe" in line or line.startswith("  - ")]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("import-pairs", "import-corpus", "validate", "run", "demo", "merge"):
        assert command in out


def subparsers() -> dict:
    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    return action.choices


def test_the_command_table_builds_the_parser_and_the_dispatch():
    table = command_table()
    parsers = subparsers()
    assert [command.name for command in table] == list(parsers)
    assert set(STAGES.names()) < set(parsers)
    for command in table:
        assert parsers[command.name].get_default("handler") is command.handler
        if command.options_class is not None:
            flags = {option for action in parsers[command.name]._actions for option in action.option_strings}
            assert {spec.flag for spec in option_specs(command.options_class).values()} <= flags


def test_stage_help_shows_defaults(capsys):
    assert main(["import-pairs", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--shard-size" in out and "(default: 10000)" in out and "--no-strict" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_one_line(capsys):
    assert main(["extract-regionz"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "invalid choice" in lines[0] and "--help" in lines[0]


def test_missing_input_file_names_it(tmp_path, capsys):
    assert main(["import-pairs", "--captions", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("unimo-pipe: error: captions: input not found:") and "nope.json: check the path" in line


def test_several_mistakes_are_reported_together(tmp_path, captions, capsys):
    assert main(["import-pairs", "--captions", str(captions), "--shard-size", "abc", "--format", "xml"]) == 2
    lines = error_lines(capsys)
    assert lines[0] == "unimo-pipe: error: 3 config errors:"
    text = "\n".join(lines)
    assert "expected an integer, got 'abc'" in text and "format must be one of" in text and "out is required" in text


def test_unknown_flag_is_a_clean_error(capsys):
    assert main(["import-pairs", "--shard-sise", "3"]) == 2
    (line,) = error_lines(capsys)
    assert "unrecognized arguments: --shard-sise" in line


@pytest.mark.parametrize("command, kind, suggested", [
    ("import-features", "file", "--source"),
    ("import-pairs", "file", "--captions"),
    ("shard", "folder", "--pairs"),
    ("extract-regions", "folder", "--images"),
    ("finetune-classifier", "file", "--train"),
    ("evaluate", "folder", "--model {path} or --shards"),
])
def test_a_bare_input_path_suggests_its_flag(tmp_path, capsys, command, kind, suggested):
    path = tmp_path / "input"
    path.mkdir() if kind == "folder" else path.write_text("{}\n")
    assert main([command, str(path), "--out", str(tmp_path / "out")]) == 2
    (line,) = error_lines(capsys)
    assert line == (f"unimo-pipe: error: {path} is a path, not a key=value override: "
                    f"did you mean {suggested.format(path=path)} {path}?")


def test_a_bare_word_that_is_no_path_is_still_a_malformed_override(tmp_path, capsys):
    assert main(["import-features", "nothing-here", "--out", str(tmp_path / "out")]) == 2
    assert "override 'nothing-here' is not key=value" in error_lines(capsys)[0]


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["import-pairs", "--debug", "--captions", str(tmp_path / "x.jsonl"), "--out", "o"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_precedence_through_the_cli(tmp_path, captions):
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({"stage": "import-pairs", "captions": ["caps.jsonl"], "shard_size": 2,
                                      "max_caption_chars": 50, "format": "jsonl"}))
    out = tmp_path / "out"
    assert main(["import-pairs", "--config", str(config), "--shard-size", "3", "--max-caption-chars", "60",
                 "--out", str(out), "max_caption_chars=70"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["shard_size"] == 3 and resolved["max_caption_chars"] == 70 and resolved["format"] == "jsonl"
    assert resolved["captions"] == [str(captions)]  # relative to the YAML file
    assert json.loads((out / "summary.json").read_text())["shards"] == 2


def test_config_for_another_stage_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("stage: import-corpus\n")
    assert main(["import-pairs", "--config", str(config)]) == 2
    assert "is a config for 'import-corpus', not 'import-pairs'" in error_lines(capsys)[0]


def test_validate_names_both_unknown_keys(tmp_path, captions, capsys):
    config = tmp_path / "wf.yaml"
    config.write_text(yaml.safe_dump({"steps": [
        {"stage": "import-pairs", "captions": ["caps.jsonl"], "out": "pairs", "shard_sise": 5, "formt": "jsonl"}]}))
    assert main(["validate", str(config)]) == 2
    text = "\n".join(error_lines(capsys))
    assert "unknown option 'shard_sise'" in text and "did you mean 'shard_size'" in text
    assert "unknown option 'formt'" in text and "did you mean 'format'" in text


def test_validate_accepts_inputs_made_by_earlier_steps(tmp_path, captions, capsys):
    config = tmp_path / "wf.yaml"
    config.write_text(yaml.safe_dump({"vars": {"out": "runs"}, "steps": [
        {"stage": "import-pairs", "captions": ["caps.jsonl"], "out": "${out}/pairs"},
        {"stage": "import-corpus", "text_corpus": ["${out}/pairs/shards/00000/pairs.jsonl"], "out": "${out}/c"}]}))
    assert main(["validate", str(config)]) == 0
    assert "ok (2 steps: import-pairs, import-corpus)" in capsys.readouterr().out


def test_validate_reports_problems_across_steps(tmp_path, capsys):
    config = tmp_path / "wf.yaml"
    config.write_text(yaml.safe_dump({"steps": [{"stage": "import-pairz", "out": "a"},
                                                {"stage": "import-corpus", "out": "${nope}/c"}], "stepz": 1}))
    assert main(["validate", str(config)]) == 2
    text = "\n".join(error_lines(capsys))
    assert "unknown top-level key 'stepz'" in text
    assert "unknown stage 'import-pairz': did you mean 'import-pairs'?" in text
    assert "unknown variable ${nope}" in text and "text_corpus is required" in text


def test_validate_unreadable_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"steps: [\n")
    assert main(["validate", str(config)]) == 2
    assert "is not valid YAML" in error_lines(capsys)[0]
    config.write_text("foo: 1\n")
    assert main(["validate", str(config)]) == 2
    assert "names no stage" in error_lines(capsys)[0]


def test_run_workflow_with_overrides_and_summary(tmp_path, captions, capsys):
    config = tmp_path / "wf.yaml"
    config.write_text(yaml.safe_dump({"vars": {"out": "runs"}, "steps": [
        {"stage": "import-pairs", "captions": ["caps.jsonl"], "out": "${out}/pairs"}]}))
    assert main(["run", str(config), "vars.out=elsewhere", "import-pairs.shard_size=2"]) == 0
    out = capsys.readouterr().out
    assert "import-pairs" in out and "3/3/3" in out
    assert json.loads((tmp_path / "elsewhere" / "pairs" / "summary.json").read_text())["ok"] == 6
    assert main(["run", str(config), "vars.out=elsewhere", "import-pairs.shard_size=2"]) == 0
    assert "0/3/3" in capsys.readouterr().out  # everything skipped the second time
    assert main(["run", str(config), "pairs.shard_size=2"]) == 2
    assert "override for unknown step 'pairs'" in error_lines(capsys)[0]


def test_cli_import_is_light():
    code = ("import sys; from unimo_pipe.pipeline.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'lmdb', 'h5py', 'transformers', 'spacy', 'faiss') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "unimo_pipe", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("unimo-pipe ")
