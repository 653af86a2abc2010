"""Stage options as dataclasses, filled from defaults < YAML < flags < `key=value` overrides.

Every field is declared with `option(...)`, which records its help, bounds and whether it changes
what the stage writes. `resolve_options` merges the sources and validates everything at once,
raising one `ConfigError` that lists every problem, before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unimo_pipe.pipeline.errors import ConfigError, UserError
from unimo_pipe.pipeline.formats import STAGE_RECORD
from unimo_pipe.pipeline.jsonl import read_json

_MISSING = dataclasses.MISSING
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def option(
    default: Any = None,
    *,
    help: str,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    required: bool = False,
    must_exist: bool = False,
    affects_output: bool = True,
    metavar: str | None = None,
) -> Any:
    """Declare one stage option; a list default is copied per instance."""
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "required": required,
        "must_exist": must_exist,
        "affects_output": affects_output,
        "metavar": metavar,
    }
    if isinstance(default, list):
        return field(default_factory=functools.partial(list, default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: Any
    default: Any
    help: str
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    required: bool
    must_exist: bool
    affects_output: bool
    metavar: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def base_type(self) -> Any:
        return _strip_optional(self.type)

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.base_type) is list


@functools.cache
def option_specs(options_class: type) -> dict[str, OptionSpec]:
    """The declared options of a stage's dataclass, in declaration order."""
    hints = typing.get_type_hints(options_class)
    specs = {}
    for f in dataclasses.fields(options_class):
        default = f.default if f.default is not _MISSING else f.default_factory()  # type: ignore[misc]
        meta = f.metadata
        specs[f.name] = OptionSpec(
            name=f.name,
            type=hints[f.name],
            default=default,
            help=meta.get("help", ""),
            minimum=meta.get("minimum"),
            maximum=meta.get("maximum"),
            choices=meta.get("choices"),
            required=meta.get("required", False),
            must_exist=meta.get("must_exist", False),
            affects_output=meta.get("affects_output", True),
            metavar=meta.get("metavar"),
        )
    return specs


def likely_input_flags(options_class: type, path: Path) -> list[str]:
    """The flags a bare `path` on the command line most likely meant, best first; empty when none takes a path.

    Input options are the `must_exist` ones; the required ones are the likeliest. Among those, a file
    is not offered to a DIR option nor a folder to a FILE one, unless nothing else is left.
    """
    inputs = [spec for spec in option_specs(options_class).values() if spec.must_exist]
    likely = [spec for spec in inputs if spec.required] or inputs
    wrong_metavar = "FILE" if path.is_dir() else "DIR"
    fitting = [spec for spec in likely if spec.metavar != wrong_metavar]
    return [spec.flag for spec in fitting or likely]


@dataclass
class Source:
    """One layer of option values: where they came from and how to read them."""

    origin: str
    values: dict[str, Any]
    base_dir: Path = field(default_factory=Path.cwd)
    from_strings: bool = False


def parse_overrides(items: list[str], origin: str = "override") -> Source:
    """Turn `key=value` strings into a Source; a malformed item is a user error."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not key=value: write it as e.g. shard_size=1000")
        values[key.strip()] = value
    return Source(origin=origin, values=values, from_strings=True)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every way it can be unreadable into one clear error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise UserError(f"config file {path}{line} is not valid YAML: fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def resolve_options(options_class: type, sources: list[Source], *, produced: tuple[Path, ...] = ()) -> Any:
    """Merge sources (later wins) into an options instance, or raise ConfigError with every problem.

    `produced` lists output folders of earlier workflow steps: inputs under them need not exist yet.
    """
    specs = option_specs(options_class)
    errors: list[str] = []
    values = {name: spec.default for name, spec in specs.items()}
    for source in sources:
        for raw_key, raw_value in source.values.items():
            key = str(raw_key).replace("-", "_")
            if key not in specs:
                errors.append(_unknown_key_message(str(raw_key), source.origin, specs))
                continue
            try:
                values[key] = _coerce(raw_value, specs[key].type, source)
            except ValueError as exc:
                errors.append(f"{key} ({source.origin}): {exc}")
    for spec in specs.values():
        errors.extend(_check_value(spec, values[spec.name], produced))
    if errors:
        raise ConfigError(errors)
    return options_class(**values)


def _unknown_key_message(key: str, origin: str, specs: dict[str, OptionSpec]) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(specs), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(specs)}"
    return f"unknown option {key!r} ({origin}){hint}"


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, source: Source) -> Any:
    if _is_optional(tp):
        if value is None or (source.from_strings and str(value).strip().lower() in _NONE):
            return None
        tp = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if source.from_strings and isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        return [_coerce_scalar(v, item_type, source) for v in value]
    return _coerce_scalar(value, tp, source)


def _coerce_scalar(value: Any, tp: Any, source: Source) -> Any:
    if value is None:
        raise ValueError("a value is required here, got nothing")
    if tp is bool:
        return _coerce_bool(value)
    if tp is int:
        return _coerce_int(value)
    if tp is float:
        return _coerce_float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got a {type(value).__name__}")
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ValueError(f"expected a path, got {value!r}")
        path = Path(str(value).strip()).expanduser()
        return path if path.is_absolute() else source.base_dir / path
    raise TypeError(f"unsupported option type {tp!r}")


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


_LARGEST_INT = 2**63 - 1  # what numpy, torch and itertools take as a count or size


def _coerce_int(value: Any) -> int:
    number = _parse_int(value)
    if abs(number) > _LARGEST_INT:
        raise ValueError(f"{value!r} is too large (at most {_LARGEST_INT:,}): pass a realistic number")
    return number


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _coerce_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _check_value(spec: OptionSpec, value: Any, produced: tuple[Path, ...]) -> list[str]:
    if value is None or value == []:
        if spec.required:
            return [f"{spec.name} is required: pass {spec.flag} or {spec.name}=VALUE"]
        return []
    items = value if isinstance(value, list) else [value]
    errors = []
    for item in items:
        if spec.minimum is not None and item < spec.minimum:
            errors.append(f"{spec.name} must be >= {spec.minimum}, got {item}")
        if spec.maximum is not None and item > spec.maximum:
            errors.append(f"{spec.name} must be <= {spec.maximum}, got {item}")
        if spec.choices is not None and item not in spec.choices:
            errors.append(f"{spec.name} must be one of {', '.join(spec.choices)}; got {item!r}")
        if spec.must_exist and not _exists_or_produced(item, produced):
            errors.append(f"{spec.name}: input not found: {item}: check the path")
        elif spec.must_exist and (problem := special_file_problem(item)):
            errors.append(f"{spec.name}: {problem}")
        elif spec.must_exist and spec.metavar == "DIR" and item.is_file():
            errors.append(f"{spec.name}: {item} is a file, not a folder: pass the folder ({spec.flag} DIR)")
    return errors


def _exists_or_produced(path: Path, produced: tuple[Path, ...]) -> bool:
    return path.exists() or any(path == out or out in path.parents for out in produced)


_SPECIAL_FILE_KINDS = ((stat.S_ISFIFO, "pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"))


def special_file_problem(path: Path) -> str | None:
    """Why an existing input that is neither a file nor a folder (a pipe, a device) is refused; None if it is not.

    Only stats the path: opening a named pipe without a writer would block.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for is_kind, kind in _SPECIAL_FILE_KINDS:
        if is_kind(mode):
            # Inputs are read more than once (the config hash fingerprints them, then every worker streams
            # them), which a pipe cannot give.
            return f"{path} is a {kind}, not a regular file: write the data to a file first and pass that file"
    return None


def options_to_dict(options: Any) -> dict[str, Any]:
    """Plain, YAML-friendly values of an options instance (paths as strings)."""
    return {name: _plain(getattr(options, name)) for name in option_specs(type(options))}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def output_affecting_dict(options: Any) -> dict[str, Any]:
    """The options that change what a stage writes; input paths are replaced by content fingerprints."""
    result = {}
    for name, spec in option_specs(type(options)).items():
        if not spec.affects_output:
            continue
        value = getattr(options, name)
        if spec.must_exist and value is not None:
            paths = value if isinstance(value, list) else [value]
            result[name] = [fingerprint(p) for p in paths]
        else:
            result[name] = _plain(value)
    return result


def config_hash(stage_name: str, format_version: int, options: Any) -> str:
    """A short, stable hash of everything that determines a stage's outputs."""
    payload = {"stage": stage_name, "format": format_version, "options": output_affecting_dict(options)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_EDGE_BYTES = 1 << 20


def fingerprint(path: Path) -> str:
    """Cheap content identity of an input: size plus hashed head and tail for files, listing for folders.

    Paths themselves are not used, so moving the inputs does not invalidate finished shards.
    """
    digest = hashlib.sha256()
    stage_record = path / STAGE_RECORD
    if stage_record.is_file():
        # Another stage's output folder: what made it identifies it, not its (timing-laden) files.
        record = read_json(stage_record)  # a damaged one is named
        return "stage:" + (record.get("config_hash", "?") if isinstance(record, dict) else "?")
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            # fsencode: a file name that is not UTF-8 keeps its own bytes (str.encode refuses it)
            digest.update(os.fsencode(child.relative_to(path)) + f"\0{child.stat().st_size}\n".encode())
        return "dir:" + digest.hexdigest()[:16]
    if not path.exists():
        return "missing"
    if problem := special_file_problem(path):
        raise UserError(problem)
    size = path.stat().st_size
    with path.open("rb") as f:
        digest.update(f.read(_EDGE_BYTES))
        if size > 2 * _EDGE_BYTES:
            f.seek(size - _EDGE_BYTES)
            digest.update(f.read())
    return f"file:{size}:{digest.hexdigest()[:16]}"
