"""`retrieve`: UNIMO's single-modal augmentation sets, X_I (related images) and X_T (related sentences).

For each image-text pair: the top-k images of the image collection nearest to the pair's image, and
the top-k corpus sentences nearest to its caption. Excluded: the pair's own image and caption,
near-duplicates of the query (score >= --dedup-threshold), repeats within a result list, and anything
named in --exclude (e.g. the evaluation split, so test data never leaks into pretraining).

Corpus and collection embeddings are computed once by the embed-text / embed-images stages into
OUT/text_emb and OUT/image_emb (resumable, reused while inputs and model are unchanged).

Per shard: retrieval.npz (pair_ids; image_ids/image_scores and text_ids/text_scores, (n, k), sorted,
'' / NaN padded; text_rows, the sentences' rows of OUT/text_emb, -1 padded) and, unless --no-jsonl-view,
retrieval.jsonl with
{"id", "images": [{"id", "score"}], "texts": [{"text", "id", "score"}]}.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.models.embedders import (
    DEFAULT_TEXT_MODEL,
    POOLING_MODES,
    ImageVectors,
    TextEncoder,
    normalize_rows,
    resolve_device,
)
from unimo_pipe.models.vector_index import INDEX_KINDS, VectorIndex, build_index, choose_kind, tune_search
from unimo_pipe.pipeline.config import config_hash, option
from unimo_pipe.pipeline.embedding_store import EmbeddingTable, load_embedding_output
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import (
    IMAGE_EMBEDDINGS_DIR,
    RETRIEVAL_FILE,
    RETRIEVAL_VIEW_FILE,
    STAGE_RECORD,
    SUMMARY_FILE,
    TEXT_EMBEDDINGS_DIR,
    ImageKeys,
)
from unimo_pipe.pipeline.jsonl import read_json, write_json_atomic
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_pairs_input
from unimo_pipe.pipeline.stage import CommonOptions, Record, RunContext, ShardContext, Stage, executor_options
from unimo_pipe.pipeline.text import normalize_text
from unimo_pipe.stages.embed_images import EmbedImages, EmbedImagesOptions
from unimo_pipe.stages.embed_text import DEVICES, EmbedText, EmbedTextOptions

logger = logging.getLogger("unimo_pipe")

INDEX_REPORT = "indexes.json"


@dataclass
class RetrieveOptions(CommonOptions):
    pairs: Path | None = option(None, help="image-caption pairs: an import-pairs folder or a caption file",
                                required=True, must_exist=True, metavar="PATH")
    pairs_format: str = option("auto", help="format of a pairs file", choices=CAPTION_FORMATS)
    image_features: Path | None = option(None, help="features of the pairs' images: an extract-regions folder "
                                         "or an embedding file", must_exist=True, metavar="PATH")
    image_collection: list[Path] = option([], help="images to retrieve from: extract-regions folders or "
                                          "embedding files", must_exist=True, metavar="PATH")
    text_corpus: list[Path] = option([], help="sentences to retrieve from: text files, JSONL or "
                                     "import-corpus folders", must_exist=True, metavar="PATH")
    k: int = option(100, help="images and sentences kept per pair", minimum=1)
    text_model: str = option(DEFAULT_TEXT_MODEL, help="sentence-transformers model (local folder or hub id)")
    index: str = option("auto", help="index type; auto = exact when it fits --memory-budget-gb",
                        choices=INDEX_KINDS)
    memory_budget_gb: float = option(8.0, help="memory an index may use per modality: exact when it fits, else "
                                     "the largest compressed codes that do", minimum=0.0)
    target_recall: float = option(0.95, help="recall@k an approximate index's search is tuned to (on a sample "
                                  "of the pairs' own queries against exact results)", minimum=0.0, maximum=1.0)
    dedup_threshold: float = option(0.95, help="results at least this similar to the query are near-duplicates",
                                    minimum=0.0, maximum=1.0)
    exclude: list[Path] = option([], help="pairs whose images and captions must never be retrieved "
                                 "(e.g. the test split): caption files or import-pairs folders",
                                 must_exist=True, metavar="PATH")
    image_pooling: str = option("mean", help="how region features become one image vector", choices=POOLING_MODES)
    image_pca_dim: int = option(0, help="reduce image vectors to this many dimensions with PCA (0: off)",
                                minimum=0)
    recall_sample: int = option(1000, help="queries sampled from the pairs to tune and measure an approximate "
                                "index's recall", minimum=1)
    jsonl_view: bool = option(True, help="also write the readable retrieval.jsonl")
    device: str = option("auto", help="where to encode and search", choices=DEVICES, affects_output=False)
    batch_size: int = option(256, help="captions per encoder batch", minimum=1, affects_output=False)
    seed: int = option(0, help="seed for index training and PCA")


@dataclass
class _Side:
    """One modality's searchable collection."""

    table: EmbeddingTable
    index: VectorIndex
    report: dict[str, Any]
    text_keys: list[str] = field(default_factory=list)


class Retrieve(Stage):
    name = "retrieve"
    summary = "FAISS retrieval sets: related images (X_I) and sentences (X_T) for every pair"
    options_class = RetrieveOptions

    def check(self, options: RetrieveOptions) -> list[str]:
        problems = []
        if not options.text_corpus and not options.image_collection:
            problems.append("nothing to retrieve from: pass --text-corpus and/or --image-collection")
        if options.image_collection and options.image_features is None:
            problems.append("--image-collection needs --image-features (where the pairs' own images are)")
        return problems

    def iter_records(self, options: RetrieveOptions) -> Iterator[Record]:
        yield from iter_pairs_input(options.pairs, options.pairs_format)

    def models_used(self, options: RetrieveOptions) -> list[str]:
        if not options.text_corpus:
            return []
        return [f"retrieve: text encoder {options.text_model} (real pretrained sentence-transformers weights)"]

    # -- set-up, once per process and only if some shard needs work --

    def open(self, options: RetrieveOptions, run: RunContext) -> None:
        self.device = resolve_device(options.device)
        self.excluded_images, self.excluded_texts = _exclusions(options.exclude)
        self.text_side = self._text_side(options) if options.text_corpus else None
        self.image_side = self._image_side(options) if options.image_collection else None
        if self.text_side is not None:
            self.encoder = TextEncoder(model=options.text_model, device=self.device, batch_size=options.batch_size)
        if self.image_side is not None:
            self.query_images = ImageVectors(options.image_features, pooling=options.image_pooling)
            self._check_image_dims(options)
            self.collection_keys = ImageKeys(self.image_side.table.ids, store="the image collection")
            self.excluded_image_ids = {key for image in self.excluded_images
                                       for key in self.collection_keys.candidates(image)}
        self._tune_approximate(options)
        reports = {side: s.report for side, s in (("text", self.text_side), ("image", self.image_side)) if s}
        write_json_atomic(options.out / INDEX_REPORT, reports)

    def _tune_approximate(self, options: RetrieveOptions) -> None:
        """Tune each approximate index to --target-recall on a sample of the pairs' own queries; one line
        when it falls short within the memory budget."""
        sides = [(name, side) for name, side in (("text", self.text_side), ("image", self.image_side))
                 if side is not None and not side.index.exact]
        if not sides:
            return
        sample = _sample_pairs(self.iter_records(options), options.recall_sample, options.seed)
        for name, side in sides:
            if name == "text":
                _, queries, usable = self._caption_queries(sample)
            else:
                queries, found, _, usable = self._image_queries(sample)
                usable &= np.array([key is not None for key in found], dtype=bool)
            own_rows = None
            if not usable.any():  # no pair has a usable query: collection vectors stand in
                own_rows = np.random.default_rng(options.seed).choice(
                    len(side.table), min(len(side.table), options.recall_sample), replace=False)
            tuning = tune_search(side.index, side.table.vectors,
                                 queries[usable] if own_rows is None else side.table.vectors[own_rows],
                                 k=options.k, target=options.target_recall, own_rows=own_rows)
            if tuning is None:
                continue
            side.report.update(tuning.report(min(options.k, len(side.table)), options.target_recall))
            side.report["recall_queries_from"] = "pairs" if own_rows is None else "collection"
            logger.info("retrieve: %s index tuned: %s", name, side.report)
            if not tuning.target_met:
                logger.warning("retrieve: the %s index (%s) reaches recall@%d %.3f, short of --target-recall %s, "
                               "within --memory-budget-gb %.3g: raise the budget, lower the target, or choose "
                               "another --index", name, side.report.get("codes", side.report["index"]),
                               min(options.k, len(side.table)), tuning.recall, options.target_recall,
                               options.memory_budget_gb)

    def prepare_run(self, options: RetrieveOptions, run: RunContext) -> None:
        """Embed the corpus and the collection (or reuse their embeddings) before any shard is searched."""
        if run.selection.count == 1 and run.run_upstream is not None:  # several workers: embedded beforehand
            for stage, sub_options in _embedding_stages(options).values():
                run.run_upstream(stage, sub_options)

    def _text_side(self, options: RetrieveOptions) -> _Side:
        table = _embedded(*_embedding_stages(options)["text"], "text corpus")
        side = self._side(table, options, "text")
        side.text_keys = [_text_key(row["text"]) for row in table.rows]
        return side

    def _image_side(self, options: RetrieveOptions) -> _Side:
        table = _embedded(*_embedding_stages(options)["image"], "image collection")
        self.pca = None
        if options.image_pca_dim:
            self.pca = _fit_pca(table.vectors, options.image_pca_dim, options.seed)
            table.vectors = _apply_pca(self.pca, table.vectors)
        return self._side(table, options, "image")

    def _side(self, table: EmbeddingTable, options: RetrieveOptions, modality: str) -> _Side:
        size, dim = table.vectors.shape
        budget = options.memory_budget_gb * 2**30
        kind = choose_kind(options.index, size=size, dim=dim, memory_budget_bytes=budget, device=self.device)
        index = build_index(kind, table.vectors, device=self.device, seed=options.seed, memory_budget_bytes=budget)
        report: dict[str, Any] = {"index": kind, "exact": index.exact, "size": size, "dim": dim,
                                  **index.encoding(), "memory_budget_bytes": int(budget)}
        logger.info("retrieve: %s index over %d %s vectors (%s)", kind, size, modality, report)
        return _Side(table, index, report)

    def _check_image_dims(self, options: RetrieveOptions) -> None:
        query_dim = self.query_images.dim
        collection_dim = self.image_side.table.vectors.shape[1] if self.pca is None else self.pca.d_in
        if query_dim != collection_dim:
            raise UserError(f"image features {options.image_features} have {query_dim} dimensions but the image "
                            f"collection has {collection_dim}: use stores from the same detector or embedding model")

    # -- one shard --

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: RetrieveOptions = ctx.options
        text_results = self._search_texts(records, options, ctx) if self.text_side else None
        image_results = self._search_images(records, options, ctx) if self.image_side else None
        pair_ids, per_pair = [], []
        for i, record in enumerate(records):
            with ctx.record(record.key):
                texts = text_results[i] if text_results is not None else []
                images = image_results[i] if image_results is not None else []
                pair_ids.append(record.key)
                per_pair.append((images, texts))
        _write_results(ctx.work_dir, pair_ids, per_pair, options.k, options.jsonl_view)

    def _caption_queries(self, records: list[Record]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The records' captions, their normalised vectors and which of those are usable."""
        captions = [normalize_text(str(r.value.get("caption") or "")) for r in records]
        vectors, usable = normalize_rows(self.encoder.encode(captions))
        return captions, vectors, usable

    def _search_texts(self, records: list[Record], options: RetrieveOptions, ctx: ShardContext) -> list[list[dict]]:
        side = self.text_side
        captions, vectors, usable = self._caption_queries(records)
        scores, rows = side.index.search(vectors, _search_depth(options.k, len(side.table)))
        results = []
        for i, caption in enumerate(captions):
            if not usable[i]:
                ctx.stats.count("caption_unusable_for_search")
                results.append([])
                continue
            own = {_text_key(caption)}
            hits = self._filter(scores[i], rows[i], options, lambda row: side.text_keys[row],
                                blocked=own | self.excluded_texts)
            results.append([{"text": side.table.rows[row]["text"], "id": side.table.rows[row]["id"], "score": score,
                             "row": row}
                            for row, score in hits])
            _count_short(ctx, "texts", len(hits), options.k)
        return results

    def _image_queries(self, records: list[Record]):
        """The records' image vectors (normalised, after PCA), their stored keys (None where the next list
        says why there is no vector) and which vectors are usable."""
        queries, found, missing = [], [], []
        for record in records:
            key, reason = _resolved(self.query_images, record.value.get("image"))
            vector = self.query_images.vector(key) if key else None
            if vector is not None and vector.shape != (self.query_images.dim,):
                key, reason, vector = None, "image_dimension_mismatch", None  # a store mixing feature sizes
            found.append(key)
            missing.append(reason)
            queries.append(vector if vector is not None else np.zeros(self.query_images.dim, np.float32))
        vectors = np.stack(queries) if queries else np.zeros((0, self.query_images.dim), np.float32)
        if self.pca is not None:
            vectors = _apply_pca(self.pca, vectors)
        vectors, usable = normalize_rows(vectors)
        return vectors, found, missing, usable

    def _search_images(self, records: list[Record], options: RetrieveOptions, ctx: ShardContext):
        side = self.image_side
        vectors, found, missing, usable = self._image_queries(records)
        scores, rows = side.index.search(vectors, _search_depth(options.k, len(side.table)))
        ids = side.table.ids
        results = []
        for i, record in enumerate(records):
            if found[i] is None or not usable[i]:
                ctx.stats.count(missing[i] or "image_unusable_for_search")
                results.append([])
                continue
            # The query's own image, and excluded ones, are matched to collection keys as pairs are to stores.
            own = {*self.collection_keys.candidates(found[i]), *self.collection_keys.candidates(record.value["image"])}
            hits = self._filter(scores[i], rows[i], options, lambda row: ids[row],
                                blocked=own | self.excluded_image_ids)
            results.append([{"id": ids[row], "score": score} for row, score in hits])
            _count_short(ctx, "images", len(hits), options.k)
        return results

    @staticmethod
    def _filter(scores: np.ndarray, rows: np.ndarray, options: RetrieveOptions, key_of, blocked: set[str]):
        """(row, score) of the best k results that are not the query, near-duplicates, excluded or repeats."""
        kept, seen = [], set(blocked)
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            if row < 0 or score >= options.dedup_threshold:
                continue
            key = key_of(row)
            if key in seen:
                continue
            seen.add(key)
            kept.append((row, round(float(score), 5)))
            if len(kept) == options.k:
                break
        return kept


def _embedding_stages(options: RetrieveOptions) -> dict[str, tuple[Stage, Any]]:
    """The embed-text / embed-images runs whose outputs (OUT/text_emb, OUT/image_emb) retrieve searches; they
    run on the same executor as retrieve."""
    shared = {"overwrite": options.overwrite, **executor_options(options)}
    stages: dict[str, tuple[Stage, Any]] = {}
    if options.text_corpus:
        stages["text"] = (EmbedText(), EmbedTextOptions(
            out=options.out / TEXT_EMBEDDINGS_DIR, text_corpus=options.text_corpus, text_model=options.text_model,
            device=options.device, batch_size=options.batch_size, **shared))
    if options.image_collection:
        stages["image"] = (EmbedImages(), EmbedImagesOptions(
            out=options.out / IMAGE_EMBEDDINGS_DIR, image_collection=options.image_collection,
            pooling=options.image_pooling, **shared))
    return stages


def _embedded(stage: Stage, sub_options: Any, what: str) -> EmbeddingTable:
    """The table of an embedding stage's finished output, checked to be made from these inputs and model
    (`prepare_run` made it, or, with several workers, the user did beforehand)."""
    _require_embedded(stage, sub_options, what)
    table = load_embedding_output(sub_options.out)
    if len(table) == 0:
        raise UserError(f"the {what} has no usable entries: check {sub_options.out}/shards/*/stats.json")
    return table


def _require_embedded(stage: Stage, sub_options: Any, what: str) -> None:
    record = sub_options.out / STAGE_RECORD
    expected = config_hash(stage.name, stage.format_version, sub_options)
    made_by = read_json(record).get("config_hash") if record.is_file() else None
    if made_by != expected or not (sub_options.out / SUMMARY_FILE).is_file():
        raise UserError(f"with several workers, embed the {what} first with the same inputs and model: run "
                        f"`unimo-pipe {stage.name}` into {sub_options.out} (it shards too), then retrieve")


def _resolved(images: ImageVectors, image: Any) -> tuple[str | None, str | None]:
    """(stored key, None), or (None, the counter naming why the pair's image has no vector)."""
    try:
        return images.resolve(image), None
    except RecordError as exc:
        return None, "image_missing_from_features" if exc.reason == "image_not_in_features" else exc.reason


def _sample_pairs(records: Iterator[Record], count: int, seed: int) -> list[Record]:
    """Up to `count` readable records, a uniform sample (reservoir) in input order."""
    rng, sample, seen = random.Random(seed), [], 0
    for record in records:
        if record.error is not None:
            continue
        seen += 1
        if len(sample) < count:
            sample.append(record)
        elif (slot := rng.randrange(seen)) < count:
            sample[slot] = record
    return sample


def _search_depth(k: int, size: int) -> int:
    # Room for the exclusions (own item, near-duplicates, repeats) so k usually survive.
    return min(size, 2 * k + 16)


def _count_short(ctx: ShardContext, what: str, found: int, k: int) -> None:
    if found < k:
        ctx.stats.count(f"{what}_fewer_than_k")


def _text_key(text: str) -> str:
    """Comparison key for captions and sentences: case, punctuation and spacing ignored."""
    return " ".join(re.sub(r"[^\w\s]", " ", normalize_text(text).lower()).split())


def _exclusions(paths: list[Path]) -> tuple[set[str], set[str]]:
    images, texts = set(), set()
    for path in paths:
        for record in iter_pairs_input(path):
            if record.error is None:
                if record.value.get("image"):
                    images.add(str(record.value["image"]))
                texts.add(_text_key(str(record.value.get("caption") or "")))
    texts.discard("")
    return images, texts


def _fit_pca(vectors: np.ndarray, dim: int, seed: int):
    import faiss

    if dim >= vectors.shape[1]:
        raise UserError(f"--image-pca-dim {dim} must be smaller than the image vectors' {vectors.shape[1]} dimensions")
    pca = faiss.PCAMatrix(vectors.shape[1], dim)
    sample = np.random.default_rng(seed).choice(len(vectors), min(len(vectors), 100_000), replace=False)
    pca.train(np.ascontiguousarray(vectors[sample]))
    return pca


def _apply_pca(pca, vectors: np.ndarray) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros((0, pca.d_out), np.float32)
    return normalize_rows(pca.apply(np.ascontiguousarray(vectors, dtype=np.float32)))[0]


def _write_results(work_dir: Path, pair_ids: list[str], per_pair: list[tuple[list, list]], k: int,
                   view: bool) -> None:
    n = len(pair_ids)
    arrays: dict[str, np.ndarray] = {"pair_ids": np.array(pair_ids, dtype=str)}
    for position, name in ((0, "image"), (1, "text")):
        ids = np.full((n, k), "", dtype=object)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        for i, results in enumerate(per_pair):
            for j, hit in enumerate(results[position]):
                ids[i, j], scores[i, j] = hit["id"], hit["score"]
        arrays[f"{name}_ids"] = ids.astype(str)
        arrays[f"{name}_scores"] = scores
    text_rows = np.full((n, k), -1, dtype=np.int64)  # ids of a corpus may repeat; its rows never do
    for i, (_, texts) in enumerate(per_pair):
        text_rows[i, : len(texts)] = [hit["row"] for hit in texts]
    arrays["text_rows"] = text_rows
    np.savez(work_dir / RETRIEVAL_FILE, **arrays)
    if view:
        with (work_dir / RETRIEVAL_VIEW_FILE).open("w", encoding="utf-8") as f:
            for pair_id, (images, texts) in zip(pair_ids, per_pair, strict=True):
                readable = [{key: value for key, value in hit.items() if key != "row"} for hit in texts]
                f.write(json.dumps({"id": pair_id, "images": images, "texts": readable}, ensure_ascii=False) + "\n")
