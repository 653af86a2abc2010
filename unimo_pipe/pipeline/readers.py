"""Readers for the caption and corpus formats people have; a bad row becomes a failed Record, never a crash.

Caption formats (each record's value is {"id", "image", "caption"} plus "split" where known):
- coco: COCO captions JSON ({"images": [{"id", "file_name"}], "annotations": [{"id", "image_id", "caption"}]})
- karpathy: Karpathy-split JSON (dataset_coco.json / dataset_flickr30k.json: images with "sentences")
- tsv: Conceptual-Captions style, caption<TAB>image (or a header row naming caption/image/id columns)
- jsonl: one {"id", "image", "caption"} object per line
- lines: one caption per line, no image (ids are line numbers)
Corpora: one sentence per line, or one document per line split into sentences.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import PAIRS_FILE, SENTENCES_FILE, STAGE_RECORD
from unimo_pipe.pipeline.jsonl import iter_jsonl, read_json
from unimo_pipe.pipeline.stage import Record
from unimo_pipe.pipeline.text import split_sentences

CAPTION_FORMATS = ("auto", "coco", "karpathy", "tsv", "jsonl", "lines")
CORPUS_UNITS = ("sentence", "document")
_IMAGE_COLUMNS = ("image", "url", "file", "filename", "file_name", "path", "image_path")
_ID_COLUMNS = ("id", "key", "caption_id")


def detect_caption_format(path: Path) -> str:
    """Guess a caption file's format from its extension and, for JSON, its top-level keys."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix in (".tsv", ".csv"):
        return "tsv"
    if suffix == ".txt":
        return "lines"
    if suffix == ".json":
        data = _load_json_file(path)
        if isinstance(data, dict) and "annotations" in data:
            return "coco"
        if isinstance(data, dict) and data.get("images") and "sentences" in data["images"][0]:
            return "karpathy"
        raise UserError(
            f"{path}: JSON with neither COCO 'annotations' nor Karpathy 'images[].sentences': "
            "pass --format, or convert it to JSONL {id, image, caption}"
        )
    raise UserError(f"{path}: cannot tell the caption format from '{suffix}': pass --format (one of "
                    f"{', '.join(CAPTION_FORMATS[1:])})")


def iter_captions(path: Path, fmt: str = "auto") -> Iterator[Record]:
    """Caption records of one file in file order."""
    if fmt == "auto":
        fmt = detect_caption_format(path)
    readers: dict[str, Callable[[Path], Iterator[Record]]] = {
        "coco": _iter_coco,
        "karpathy": _iter_karpathy,
        "tsv": _iter_tsv,
        "jsonl": _iter_jsonl_captions,
        "lines": _iter_lines,
    }
    if fmt not in readers:
        raise UserError(f"unknown caption format {fmt!r}: use one of {', '.join(CAPTION_FORMATS)}")
    yield from readers[fmt](path)


def _load_json_file(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as f:  # -sig: a byte order mark is accepted
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): check the file is complete") from None


def _pair(pair_id: Any, image: Any, caption: Any, split: Any = None) -> dict[str, Any]:
    value = {"id": str(pair_id), "image": None if image is None else str(image), "caption": caption}
    if split is not None:
        value["split"] = str(split)
    return value


def _where(path: Path, position: str) -> str:
    return f"{path.name}:{position}"


def _load_json_object(path: Path, fmt: str, key: str) -> dict[str, Any]:
    """The top-level object of a COCO or Karpathy file, which holds the list `key`."""
    data = _load_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        found = f"an object without a {key!r} list" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise UserError(f"{path} is not {fmt} JSON (it holds {found}): pass the right --format, or --format auto")
    return data


def _iter_coco(path: Path) -> Iterator[Record]:
    data = _load_json_object(path, "coco", "annotations")
    images = {img.get("id"): img.get("file_name") for img in data.get("images", []) if isinstance(img, dict)}
    for i, ann in enumerate(data.get("annotations", [])):
        where = _where(path, f"annotations[{i}]")
        if not isinstance(ann, dict) or "caption" not in ann or "image_id" not in ann:
            yield Record(where, error="malformed_row", detail="annotation needs image_id and caption")
        elif ann["image_id"] not in images:
            yield Record(where, error="unknown_image_id", detail=f"image_id {ann['image_id']} not in images")
        else:
            yield Record(str(ann.get("id", where)),
                         _pair(ann.get("id", where), images[ann["image_id"]], ann["caption"]))


def _iter_karpathy(path: Path) -> Iterator[Record]:
    data = _load_json_object(path, "karpathy", "images")
    for i, image in enumerate(data.get("images", [])):
        if not isinstance(image, dict) or "filename" not in image:
            yield Record(_where(path, f"images[{i}]"), error="malformed_row", detail="image needs a filename")
            continue
        file_name = "/".join(p for p in (image.get("filepath"), image["filename"]) if p)
        for j, sentence in enumerate(image.get("sentences", [])):
            where = _where(path, f"images[{i}].sentences[{j}]")
            if not isinstance(sentence, dict) or "raw" not in sentence:
                yield Record(where, error="malformed_row", detail="sentence needs 'raw'")
                continue
            pair_id = sentence.get("sentid", where)
            yield Record(str(pair_id), _pair(pair_id, file_name, sentence["raw"], image.get("split")))


def _read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per non-blank line, text None where the line is not UTF-8."""
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig").rstrip("\r\n")  # -sig: a byte order mark is accepted
            except UnicodeDecodeError:
                yield line_number, None
                continue
            if text.strip():
                yield line_number, text


def _iter_tsv(path: Path) -> Iterator[Record]:
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    columns: dict[str, int] | None = None
    for line_number, text in _read_lines(path):
        where = _where(path, str(line_number))
        if text is None:
            yield Record(where, error="invalid_utf8")
            continue
        row = next(csv.reader([text], delimiter=delimiter))
        if columns is None and line_number == 1 and _is_header(row):
            columns = _header_columns(row, path)
            continue
        yield _tsv_record(row, columns, where, f"{path.stem}-{line_number}")


def _is_header(row: list[str]) -> bool:
    return any(cell.strip().lower() == "caption" for cell in row)


def _header_columns(row: list[str], path: Path) -> dict[str, int]:
    names = [cell.strip().lower() for cell in row]
    columns = {"caption": names.index("caption")}
    for role, candidates in (("image", _IMAGE_COLUMNS), ("id", _ID_COLUMNS)):
        found = [names.index(c) for c in candidates if c in names]
        if found:
            columns[role] = found[0]
    if "image" not in columns:
        raise UserError(f"{path}: header has no image column (one of {', '.join(_IMAGE_COLUMNS)})")
    return columns


def _tsv_record(row: list[str], columns: dict[str, int] | None, where: str, default_id: str) -> Record:
    columns = columns or {"caption": 0, "image": 1}
    needed = max(columns.values()) + 1
    if len(row) < needed:
        return Record(where, error="malformed_row", detail=f"expected at least {needed} columns, got {len(row)}")
    pair_id = row[columns["id"]] if "id" in columns else default_id
    return Record(pair_id, _pair(pair_id, row[columns["image"]], row[columns["caption"]]))


def _iter_jsonl_captions(path: Path) -> Iterator[Record]:
    for line_number, obj, problem in iter_jsonl(path):
        where = _where(path, str(line_number))
        if problem:
            yield Record(where, error=problem)
        elif not isinstance(obj, dict):
            yield Record(where, error="malformed_row", detail="expected a JSON object")
        elif obj.get("id") in (None, ""):
            yield Record(where, error="missing_id")
        elif "caption" not in obj:
            yield Record(where, error="missing_caption")
        else:
            yield Record(str(obj["id"]), _pair(obj["id"], obj.get("image"), obj["caption"], obj.get("split")))


def _iter_lines(path: Path) -> Iterator[Record]:
    for line_number, text in _read_lines(path):
        where = _where(path, str(line_number))
        if text is None:
            yield Record(where, error="invalid_utf8")
        else:
            yield Record(str(line_number), _pair(line_number, None, text))


def iter_corpus(path: Path, unit: str = "sentence") -> Iterator[Record]:
    """Sentence records of a text corpus: key "<file stem>:<line>" (":<line>.<k>" for documents)."""
    if unit not in CORPUS_UNITS:
        raise UserError(f"unknown corpus unit {unit!r}: use one of {', '.join(CORPUS_UNITS)}")
    for line_number, text in _read_lines(path):
        where = f"{path.stem}:{line_number}"
        if text is None:
            yield Record(where, error="invalid_utf8")
        elif unit == "sentence":
            yield Record(where, text)
        else:
            for k, sentence in enumerate(split_sentences(text)):
                yield Record(f"{where}.{k}", sentence)


def is_stage_output(path: Path) -> bool:
    return path.is_dir() and (path / STAGE_RECORD).is_file()


def iter_pairs_input(path: Path, fmt: str = "auto") -> Iterator[Record]:
    """Pairs from a finished import-pairs folder, or straight from a caption file."""
    if is_stage_output(path):
        from unimo_pipe.pipeline.outputs import iter_output_rows

        _refuse_other_stage(path, "import-pairs", "pass an import-pairs folder or a caption file")
        for where, row, problem in iter_output_rows(path, PAIRS_FILE, required=("id", "caption")):
            yield Record(where, error=problem) if problem else Record(row["id"], row)
    elif path.is_dir():
        raise UserError(f"{path} is a folder but not a stage output: pass an import-pairs --out folder or a file")
    else:
        yield from iter_captions(path, fmt)


def _refuse_other_stage(path: Path, stage: str, fix: str) -> None:
    made_by = read_json(path / STAGE_RECORD).get("stage")
    if made_by != stage:
        raise UserError(f"{path} is output of `{made_by}`: {fix}")


def iter_texts_input(path: Path) -> Iterator[Record]:
    """Sentences (value: text) from an import-corpus folder, a JSONL of {"id", "text"}, or lines."""
    if is_stage_output(path):
        from unimo_pipe.pipeline.outputs import iter_output_rows

        _refuse_other_stage(path, "import-corpus", "pass an import-corpus folder or a text file")
        for where, row, problem in iter_output_rows(path, SENTENCES_FILE, required=("id", "text")):
            yield Record(where, error=problem) if problem else Record(row["id"], row["text"])
    elif path.suffix.lower() == ".jsonl":
        for line_number, obj, problem in iter_jsonl(path):
            where = _where(path, str(line_number))
            if problem or not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                yield Record(where, error=problem or "malformed_row", detail='expected {"id", "text"}')
            else:
                yield Record(str(obj.get("id", where)), obj["text"])
    else:
        yield from iter_corpus(path, "sentence")
