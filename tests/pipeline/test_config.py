from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from unimo_pipe.pipeline.config import (
    Source,
    config_hash,
    load_yaml,
    option,
    parse_overrides,
    resolve_options,
)
from unimo_pipe.pipeline.errors import ConfigError, UserError


@dataclass
class ExampleOptions:
    out: Path | None = option(None, help="out", required=True, affects_output=False)
    size: int = option(10, help="size", minimum=1, maximum=100)
    rate: float = option(0.5, help="rate")
    mode: str = option("fast", help="mode", choices=("fast", "exact"))
    verbose: bool = option(False, help="v", affects_output=False)
    inputs: list[Path] = option([], help="inputs", must_exist=True)
    tags: list[str] = option([], help="tags")
    limit: int | None = option(None, help="limit")


def resolve(*sources, produced=()):
    return resolve_options(ExampleOptions, list(sources), produced=produced)


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    yaml_source = Source("cfg.yaml", {"out": "o", "size": 20, "rate": 0.1, "mode": "exact"}, base_dir=tmp_path)
    flags = Source("flags", {"size": "30", "rate": "0.2"}, from_strings=True)
    overrides = parse_overrides(["size=40"])
    options = resolve(yaml_source, flags, overrides)
    assert options.size == 40  # override beats flag beats yaml
    assert options.rate == 0.2  # flag beats yaml
    assert options.mode == "exact"  # yaml beats default
    assert options.verbose is False  # default
    assert options.out == tmp_path / "o"  # relative to the YAML file's folder


def test_every_error_is_reported_together(tmp_path):
    source = Source("cfg.yaml", {"out": "o", "sise": 3, "mod": "x", "rate": "fast", "size": 0,
                                 "inputs": ["missing.txt"]}, base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve(source)
    errors = info.value.errors
    assert len(errors) == 5, errors
    text = "\n".join(errors)
    assert "unknown option 'sise'" in text and "did you mean 'size'" in text
    assert "unknown option 'mod'" in text and "did you mean 'mode'" in text
    assert "rate (cfg.yaml): expected a number, got 'fast'" in text
    assert "size must be >= 1, got 0" in text
    assert "input not found" in text and "missing.txt" in text


def test_required_choice_and_type_errors():
    with pytest.raises(ConfigError) as info:
        resolve(parse_overrides(["mode=slow", "size=abc", "verbose=maybe"]))
    text = "\n".join(info.value.errors)
    assert "out is required: pass --out or out=VALUE" in text
    assert "mode must be one of fast, exact; got 'slow'" in text
    assert "expected an integer, got 'abc'" in text
    assert "expected true or false, got 'maybe'" in text


def test_string_values_are_coerced_to_lists_optionals_and_bools(tmp_path):
    options = resolve(parse_overrides(["out=o", "tags=a,b", "limit=none", "verbose=yes"]))
    assert options.tags == ["a", "b"]
    assert options.limit is None
    assert options.verbose is True
    options = resolve(parse_overrides(["out=o", "limit=7"]))
    assert options.limit == 7


def test_yaml_bool_is_not_accepted_as_int(tmp_path):
    with pytest.raises(ConfigError, match="expected an integer"):
        resolve(Source("cfg", {"out": "o", "size": True}))


def test_inputs_produced_by_earlier_steps_need_not_exist(tmp_path):
    produced = (tmp_path / "pairs",)
    options = resolve(Source("wf", {"out": "o", "inputs": ["pairs"]}, base_dir=tmp_path), produced=produced)
    assert options.inputs == [tmp_path / "pairs"]


def test_malformed_override_is_a_user_error():
    with pytest.raises(UserError, match="not key=value"):
        parse_overrides(["size"])


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml line .* is not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_yaml(listy)


def test_config_hash_ignores_non_output_options_and_input_location(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "in.txt").write_text("same content")
    (second / "in.txt").write_text("same content")
    base = resolve(Source("x", {"out": "o1", "inputs": [str(first / "in.txt")]}))
    moved = resolve(Source("x", {"out": "o2", "verbose": True, "inputs": [str(second / "in.txt")]}))
    assert config_hash("s", 1, base) == config_hash("s", 1, moved)
    resized = resolve(Source("x", {"out": "o1", "size": 11, "inputs": [str(first / "in.txt")]}))
    assert config_hash("s", 1, base) != config_hash("s", 1, resized)
    (second / "in.txt").write_text("other content")
    assert config_hash("s", 1, base) != config_hash("s", 1, moved)
    assert config_hash("s", 1, base) != config_hash("s", 2, base)
