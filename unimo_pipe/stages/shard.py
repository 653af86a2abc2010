"""`shard`: UNIMO training bundles: each pair joined with its positives, negatives and retrieved items.

Records come in three kinds, each written to its own file per shard:
    pairs.jsonl   {"id", "image", "caption", "positives": [text], "negatives": [{"text", "kind"}],
                   "retrieved_images": [{"id", "score"}], "retrieved_texts": [{"text", "score"}]}
    texts.jsonl   {"id", "text"}             (text-only data from --text-corpus)
    images.jsonl  {"id", "source"}           (image-only data from --image-collection)
OUT/manifest.json lists every file with its kind, record count and sha256, the schema version, the
inputs and the options; the trainer's data layer (pipeline/training_data.py) reads it.

Policy for missing pieces (always counted in stats, never silent): a pair whose image is not in
--image-features is dropped (failure `image_not_in_features`, or `ambiguous_image` when its name matches
several images), since the trainer cannot load it; a pair without augmentation or retrieval results is
kept with empty lists (counters `pairs_without_*`). Retrieved items come from retrieve's retrieval.npz
(its sentences by id from the retrieve folder's text_emb); a bad row of an augment or retrieve output is
skipped and counted, with its file and line, under `input_problems` in summary.json.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.config import option, options_to_dict
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import (
    AUGMENT_FILE,
    RETRIEVAL_FILE,
    TEXT_EMBEDDINGS_DIR,
    TRAINING_FILES,
    ImageKeys,
    manifest_entries,
    write_manifest,
)
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_pairs_input, iter_texts_input
from unimo_pipe.pipeline.stage import EXECUTOR_OPTIONS, CommonOptions, Record, RunContext, ShardContext, Stage

logger = logging.getLogger("unimo_pipe")


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
    max_retrieved: int = option(100, help="retrieved images and texts kept per pair (the top ones)", minimum=0)
    min_retrieved_image_score: float = option(0.9, help="retrieved images (X_I, positives) less similar to the "
                                              "pair's image (retrieve's cosine) are left out; -1 keeps every one "
                                              "(UNIMO's setting, which lets unrelated images in as positives)",
                                              minimum=-1.0, maximum=1.0)
    min_retrieved_text_score: float = option(0.9, help="retrieved texts (X_T, positives) less similar to the "
                                             "caption (retrieve's cosine) are left out; -1 keeps every one "
                                             "(UNIMO's setting)", minimum=-1.0, maximum=1.0)


class Shard(Stage):
    name = "shard"
    summary = "join pairs, positives, negatives and retrieved items into training shards with a manifest"
    options_class = ShardOptions

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

    def open(self, options: ShardOptions, run: RunContext) -> None:
        self.augmented = _augmentations(options.augment, run)
        self.retrieved = _retrievals(options.retrieval, run) if options.retrieval else {}
        self.image_keys = None
        if options.image_features is not None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self.image_keys = ImageKeys(open_feature_dir(options.image_features).name2nbb,
                                        store=str(options.image_features))

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ShardOptions = ctx.options
        outputs: dict[str, Any] = {}
        try:
            for record in records:
                kind = record.value["kind"]
                with ctx.record(record.key):
                    row = self._pair(record, options, ctx) if kind == "pair" else _plain(record)
                    if kind not in outputs:
                        outputs[kind] = ctx.path(TRAINING_FILES[kind]).open("w", encoding="utf-8")
                    outputs[kind].write(json.dumps(row, ensure_ascii=False) + "\n")
        finally:
            for handle in outputs.values():
                handle.close()

    def _pair(self, record: Record, options: ShardOptions, ctx: ShardContext) -> dict:
        pair = record.value
        image = pair.get("image")
        if self.image_keys is not None:
            image = self.image_keys.resolve(image)
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
            "retrieved_images": _retrieved(retrieved.get("images", []), options.min_retrieved_image_score,
                                           options.max_retrieved, ctx),
            "retrieved_texts": _retrieved(retrieved.get("texts", []), options.min_retrieved_text_score,
                                          options.max_retrieved, ctx),
        }

    def finalize(self, options: ShardOptions, shard_dirs: list[Path]) -> None:
        files = manifest_entries(options.out, shard_dirs)
        _warn_if_nothing_joined(options, shard_dirs, pairs=sum(f["records"] for f in files if f["kind"] == "pair"))
        write_manifest(options.out, files,
                       image_features=str(options.image_features) if options.image_features else None,
                       image_collections=[str(p) for p in options.image_collection],
                       options={k: v for k, v in options_to_dict(options).items() if k not in EXECUTOR_OPTIONS})


def _warn_if_nothing_joined(options: ShardOptions, shard_dirs: list[Path], *, pairs: int) -> None:
    """One line when not one pair found its augmentation or retrieval: those outputs were likely made from
    other pairs."""
    from unimo_pipe.pipeline.formats import STATS_FILE
    from unimo_pipe.pipeline.jsonl import read_json

    stats = [read_json(d / STATS_FILE) for d in shard_dirs]
    for given, counter, flag in ((options.augment, "pairs_without_augmentation", "--augment"),
                                 (options.retrieval, "pairs_without_retrieval", "--retrieval")):
        missing = sum(s.get("counters", {}).get(counter, 0) for s in stats)
        if given and pairs and missing == pairs:
            logger.warning("shard: none of the %d pairs is in %s: were those outputs made from other --pairs "
                           "than %s?", pairs, flag, options.pairs)


def _retrieved(items: list[dict], min_score: float, top: int, ctx: ShardContext) -> list[dict]:
    """The `top` best retrieved items (retrieve writes them best first) that score at least `min_score`;
    the ones left out for their score are counted (`retrieved_below_min_score`)."""
    kept = [item for item in items[:top] if item["score"] >= min_score]
    if len(kept) < len(items[:top]):
        ctx.stats.count("retrieved_below_min_score", len(items[:top]) - len(kept))
    return kept


def _plain(record: Record) -> dict:
    value = {k: v for k, v in record.value.items() if k != "kind"}
    return {"id": record.key, **value}


def _augmentations(folders: list[Path], run: RunContext) -> dict[str, dict]:
    """augment.jsonl rows by pair id; a later folder adds the fields an earlier one lacks."""
    from unimo_pipe.pipeline.outputs import iter_output_rows

    rows: dict[str, dict] = {}
    for folder in folders:
        _require_stage(folder, "augment", "--augment")
        for where, row, problem in iter_output_rows(folder, AUGMENT_FILE):
            problem = problem or _augment_row_problem(row)
            if problem:
                run.input_problem(where, problem)
            else:
                rows.setdefault(str(row["id"]), {}).update(row)
    return rows


def _augment_row_problem(row: dict) -> str | None:
    """Why an augment row's positives or negatives cannot be used, or None."""
    positives, negatives = row.get("positives", []), row.get("negatives", [])
    if not (isinstance(positives, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                for p in positives)):
        return "malformed_positives"
    if not (isinstance(negatives, list) and all(isinstance(n, dict) and isinstance(n.get("text"), str)
                                                and isinstance(n.get("kind"), str) for n in negatives)):
        return "malformed_negatives"
    return None


def _retrievals(folder: Path, run: RunContext) -> dict[str, dict]:
    """{"images": [{"id", "score"}], "texts": [{"text", "score"}]} by pair id, from retrieval.npz files."""
    from unimo_pipe.pipeline.outputs import complete_shard_dirs

    _require_stage(folder, "retrieve", "--retrieval")
    results = {}
    for shard in complete_shard_dirs(folder):
        results.update(_read_retrieval_npz(shard / RETRIEVAL_FILE))
    wanted = {ref for r in results.values() for ref, _ in r["texts"]}
    texts = _corpus_texts(folder / TEXT_EMBEDDINGS_DIR, wanted, run)
    joined = {}
    for pair, r in results.items():
        found = [{"text": texts[ref], "score": score} for ref, score in r["texts"] if ref in texts]
        for ref, _ in r["texts"]:
            if ref not in texts:
                run.input_problem(f"{folder / TEXT_EMBEDDINGS_DIR} row {ref}", "retrieved_text_not_in_corpus")
        joined[pair] = {"images": [{"id": i, "score": s} for i, s in r["images"]], "texts": found}
    return joined


def _read_retrieval_npz(path: Path) -> dict[str, dict[str, list[tuple[str | int, float]]]]:
    """Per pair: images as (id, score), texts as (corpus row, score); an output made before retrieve wrote
    text_rows names its texts by id instead."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        pair_ids = arrays["pair_ids"].tolist()
        image_ids, image_scores = arrays["image_ids"].tolist(), arrays["image_scores"].tolist()
        text_refs = arrays["text_rows"].tolist() if "text_rows" in arrays else arrays["text_ids"].tolist()
        text_scores = arrays["text_scores"].tolist()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is unreadable ({type(exc).__name__}): rerun `unimo-pipe retrieve` with "
                        "--overwrite") from None
    present = (lambda ref: ref >= 0) if "text_rows" in arrays else bool
    return {str(pair): {
        "images": [(str(i), round(float(s), 5)) for i, s in zip(image_ids[row], image_scores[row], strict=True) if i],
        "texts": [(t, round(float(s), 5)) for t, s in zip(text_refs[row], text_scores[row], strict=True)
                  if present(t)],
    } for row, pair in enumerate(pair_ids)}


def _corpus_texts(text_embeddings: Path, wanted: set, run: RunContext) -> dict:
    """The sentences retrieve's results name, from its embedded corpus: by row (an int), or by id (a str)."""
    from unimo_pipe.pipeline.formats import EMBEDDING_ROWS_FILE
    from unimo_pipe.pipeline.outputs import iter_output_rows

    if not wanted:
        return {}
    texts: dict = {}
    row_index = 0
    for where, row, problem in iter_output_rows(text_embeddings, EMBEDDING_ROWS_FILE, required=("id", "text")):
        if problem:
            run.input_problem(where, problem)
            continue
        for ref in (row_index, str(row["id"])):
            if ref in wanted:
                if isinstance(ref, str) and ref in texts:
                    raise UserError(f"{text_embeddings} holds sentence id {ref!r} twice, and {text_embeddings.parent}"
                                    " names its sentences by id: rerun `unimo-pipe retrieve` with --overwrite")
                texts[ref] = row["text"]
        row_index += 1
    return texts


def _require_stage(folder: Path, stage: str, flag: str) -> None:
    from unimo_pipe.pipeline.formats import STAGE_RECORD
    from unimo_pipe.pipeline.jsonl import read_json

    record = folder / STAGE_RECORD
    try:
        made_by = read_json(record).get("stage") if record.is_file() else None
    except (ValueError, AttributeError):
        raise UserError(f"{record} is corrupt: rerun `unimo-pipe {stage}` into {folder} with --overwrite") from None
    if made_by != stage:
        what = f"output of `{made_by}`" if made_by else "not a stage output"
        raise UserError(f"{flag} {folder} is {what}: pass the --out folder of a `unimo-pipe {stage}` run")
