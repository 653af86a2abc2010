"""`shard`: UNIMO training bundles: each pair joined with its positives, negatives and retrieved items.

Records come in three kinds, each written to its own file per shard:
    pairs.jsonl   {"id", "image", "caption", "positives": [text], "negatives": [{"text", "kind"}],
                   "retrieved_images": [{"id", "score"}], "retrieved_texts": [{"text", "score"}]}
    texts.jsonl   {"id", "text"}             (text-only data from --text-corpus)
    images.jsonl  {"id", "source"}           (image-only data from --image-collection)
OUT/manifest.json lists every file with its kind, record count and sha256, the schema version, the
inputs and the options; the trainer's data layer (pipeline/training_data.py) reads it.

Policy for missing pieces (always counted in stats, never silent): a pair whose image is not in
--image-features is dropped (failure `image_not_in_features`), since the trainer cannot load it; a pair
without augmentation or retrieval results is kept with empty lists (counters `pairs_without_*`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.config import option, options_to_dict
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.jsonl import write_json_atomic
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_pairs_input, iter_texts_input
from unimo_pipe.pipeline.runner import ShardContext
from unimo_pipe.pipeline.stage import CommonOptions, Record, Stage

SCHEMA_VERSION = 1
KIND_FILES = {"pair": "pairs.jsonl", "text": "texts.jsonl", "image": "images.jsonl"}
MANIFEST = "manifest.json"


@dataclass
class ShardOptions(CommonOptions):
    pairs: Path | None = option(None, help="image-caption pairs: an import-pairs folder or a caption file",
                                required=True, must_exist=True, metavar="PATH")
    pairs_format: str = option("auto", help="format of a pairs file", choices=CAPTION_FORMATS)
    augment: list[Path] = option([], help="augment output folders (positives and/or negatives)", must_exist=True,
                                 metavar="DIR")
    retrieval: Path | None = option(None, help="retrieve output folder", must_exist=True, metavar="DIR")
    image_features: Path | None = option(None, help="region-feature folder holding the pairs' images; pairs "
                                         "whose image it lacks are dropped and counted", must_exist=True,
                                         metavar="DIR")
    text_corpus: list[Path] = option([], help="text-only data: import-corpus folders or text files",
                                     must_exist=True, metavar="PATH")
    image_collection: list[Path] = option([], help="image-only data: region-feature folders", must_exist=True,
                                          metavar="DIR")
    max_positives: int = option(3, help="positives kept per pair", minimum=0)
    max_negatives: int = option(100, help="negatives kept per pair", minimum=0)
    max_retrieved: int = option(100, help="retrieved images and texts kept per pair", minimum=0)


class Shard(Stage):
    name = "shard"
    summary = "join pairs, positives, negatives and retrieved items into training shards with a manifest"
    options_class = ShardOptions

    def __init__(self) -> None:
        self._ready = False

    def iter_records(self, options: ShardOptions) -> Iterator[Record]:
        for record in iter_pairs_input(options.pairs, options.pairs_format):
            yield record if record.error else Record(record.key, {"kind": "pair", **record.value})
        for path in options.text_corpus:
            for record in iter_texts_input(path):
                yield record if record.error else Record(record.key, {"kind": "text", "text": record.value})
        for path in options.image_collection:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            for key in sorted(open_feature_dir(path).name2nbb):
                yield Record(key, {"kind": "image", "source": str(path)})

    def _prepare(self, options: ShardOptions) -> None:
        self.augmented = _load_by_id([p for d in options.augment for p in _stage_files(d, "augment.jsonl")])
        self.retrieved = _load_by_id(_stage_files(options.retrieval, "retrieval.jsonl") if options.retrieval else [])
        self.image_keys = None
        if options.image_features is not None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            names = open_feature_dir(options.image_features).name2nbb
            self.image_keys = {**{Path(k).name: k for k in names}, **{k: k for k in names}}
        self._ready = True

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ShardOptions = ctx.options
        if not self._ready:
            self._prepare(options)
        outputs: dict[str, Any] = {}
        try:
            for record in records:
                kind = record.value["kind"]
                with ctx.record(record.key):
                    row = self._pair(record, options, ctx) if kind == "pair" else _plain(record)
                    if kind not in outputs:
                        outputs[kind] = ctx.path(KIND_FILES[kind]).open("w", encoding="utf-8")
                    outputs[kind].write(json.dumps(row, ensure_ascii=False) + "\n")
        finally:
            for handle in outputs.values():
                handle.close()

    def _pair(self, record: Record, options: ShardOptions, ctx: ShardContext) -> dict:
        pair = record.value
        image = pair.get("image")
        if self.image_keys is not None:
            found = self.image_keys.get(image) or self.image_keys.get(Path(str(image)).name)
            if found is None:
                raise RecordError("image_not_in_features", f"{image} is not in {options.image_features}")
            image = found
        augmented = self.augmented.get(record.key, {})
        retrieved = self.retrieved.get(record.key, {})
        if not augmented:
            ctx.stats.count("pairs_without_augmentation")
        if not retrieved:
            ctx.stats.count("pairs_without_retrieval")
        return {
            "id": record.key, "image": image, "caption": pair["caption"],
            "positives": [p["text"] for p in augmented.get("positives", [])][: options.max_positives],
            "negatives": [{"text": n["text"], "kind": n["kind"]} for n in augmented.get("negatives", [])
                          ][: options.max_negatives],
            "retrieved_images": retrieved.get("images", [])[: options.max_retrieved],
            "retrieved_texts": [{"text": t["text"], "score": t["score"]} for t in retrieved.get("texts", [])
                                ][: options.max_retrieved],
        }

    def finalize(self, options: ShardOptions, shard_dirs: list[Path]) -> None:
        write_manifest(options, shard_dirs)


def _plain(record: Record) -> dict:
    value = {k: v for k, v in record.value.items() if k != "kind"}
    return {"id": record.key, **value}


def _stage_files(out: Path, name: str) -> list[Path]:
    from unimo_pipe.pipeline.outputs import complete_shard_dirs

    return [d / name for d in complete_shard_dirs(out) if (d / name).is_file()]


def _load_by_id(files: list[Path]) -> dict[str, dict]:
    """Rows of stage outputs by id; a later file adds the fields an earlier one lacks."""
    from unimo_pipe.pipeline.jsonl import iter_jsonl

    rows: dict[str, dict] = {}
    for path in files:
        for _, row, problem in iter_jsonl(path):
            if not problem and isinstance(row, dict) and "id" in row:
                rows.setdefault(str(row["id"]), {}).update(row)
    return rows


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(options: ShardOptions, shard_dirs: list[Path]) -> None:
    files = []
    for shard in shard_dirs:
        for kind, name in KIND_FILES.items():
            path = shard / name
            if path.is_file():
                with path.open("rb") as f:
                    count = sum(1 for _ in f)
                files.append({"path": path.relative_to(options.out).as_posix(), "kind": kind, "records": count,
                              "sha256": sha256_of(path)})
    totals = {kind: sum(f["records"] for f in files if f["kind"] == kind) for kind in KIND_FILES}
    write_json_atomic(options.out / MANIFEST, {
        "schema_version": SCHEMA_VERSION, "totals": totals, "files": files,
        "image_features": str(options.image_features) if options.image_features else None,
        "image_collections": [str(p) for p in options.image_collection],
        "options": options_to_dict(options),
    })
