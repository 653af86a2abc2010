"""retrieve: for sampled pairs, the retrieved images (thumbnails when the files are at hand, else ids) and
sentences with their scores; score histograms; each index's kind and, for an approximate one, its recall."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.formats import (
    EMBEDDING_ROWS_FILE,
    IMAGE_EMBEDDINGS_DIR,
    PAIRS_FILE,
    RETRIEVAL_FILE,
    TEXT_EMBEDDINGS_DIR,
    committed_shard_dirs,
    key_within,
)
from unimo_pipe.pipeline.jsonl import iter_jsonl, read_json
from unimo_pipe.stages.retrieve import INDEX_REPORT
from unimo_pipe.workflows.report.discover import Found, stage_config
from unimo_pipe.workflows.report.page import Reservoir, Section, escape, table, thumbnail_uri
from unimo_pipe.workflows.report.plots import figure_html, histogram
from unimo_pipe.workflows.report.regions import ReportSettings, image_root

THUMBNAIL_SIDE = 100


class _Thumbnails:
    """Small thumbnails of retrieved images, each file read once; ids whose file is not at hand are counted."""

    def __init__(self, found: Found, settings: ReportSettings, wanted: set[str]):
        self.sources = {str(row.get("id")): row.get("source", "")
                        for _, row in _rows(found.root / IMAGE_EMBEDDINGS_DIR) if str(row.get("id")) in wanted}
        self.override = settings.images
        self.roots: dict[str, Path | None] = {}
        self.cache: dict[str, str | None] = {}
        self.missing: set[str] = set()

    def uri(self, image_id: str) -> str | None:
        if image_id not in self.cache:
            source = str(self.sources.get(image_id, ""))
            if source not in self.roots:
                self.roots[source] = image_root(stage_config(Path(source))) if source else None
            root = self.override or self.roots[source]
            inside = key_within(root, image_id) if root is not None else None
            self.cache[image_id] = thumbnail_uri(root / inside, max_side=THUMBNAIL_SIDE) if inside else None
            if self.cache[image_id] is None:
                self.missing.add(image_id)
        return self.cache[image_id]


def retrieval_section(found: Found, settings: ReportSettings) -> Section:
    section = Section(kind="retrieval", title="retrieve: neighbours", source=found.path)
    sampler = Reservoir(settings.samples, settings.seed)
    image_scores, text_scores = [], []
    for shard in found.shards:
        path = shard / RETRIEVAL_FILE
        if not path.is_file():
            section.notes.append(f"{path} is missing")
            continue
        with np.load(path, allow_pickle=False) as arrays:
            table_ = {name: arrays[name] for name in arrays.files}
        image_scores.append(table_["image_scores"].ravel())
        text_scores.append(table_["text_scores"].ravel())
        for i in range(len(table_["pair_ids"])):
            sampler.offer({name: values[i] for name, values in table_.items()})
    if not sampler.seen:
        section.notes.append(f"no {RETRIEVAL_FILE} rows to show")
        return section
    chosen = sorted(sampler.items, key=lambda r: str(r["pair_ids"]))
    rows = {int(i) for r in chosen for i in r["text_rows"].tolist() if i >= 0}
    texts = {n: str(row.get("text", "")) for n, row in _rows(found.root / TEXT_EMBEDDINGS_DIR) if n in rows}
    pairs = _pairs(found, {str(r["pair_ids"]) for r in chosen}, section)
    thumbnails = _Thumbnails(found, settings, {i for r in chosen for i in r["image_ids"].tolist() if i})
    samples = "".join(_sample(row, pairs, texts, thumbnails) for row in chosen)
    if thumbnails.missing:
        shown = sorted(thumbnails.missing)
        section.notes.append(f"{len(shown)} retrieved image file(s) not at hand, shown by id: {', '.join(shown[:10])}"
                             + (" ..." if len(shown) > 10 else "") + " (pass --images DIR)")
    plots = [figure_html(histogram(np.concatenate(scores), title=f"{kind} scores", xlabel="cosine similarity"))
             for kind, scores in (("image", image_scores), ("sentence", text_scores)) if scores]
    section.body = (f"<p>{sampler.seen:,} pairs; {len(chosen)} sampled (seed {settings.seed}).</p>"
                    + _indexes(found, section) + f'<div class="plots">{"".join(plots)}</div>'
                    + f'<h3>Samples</h3><div class="samples">{samples}</div>')
    return section


def _rows(embeddings: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of retrieve's embedded images or corpus: rows.jsonl of each committed shard, in order,
    numbered as the vectors are (a row that is not an object keeps its number, as load_embedding_output skips
    only unreadable lines)."""
    number = 0
    for shard in committed_shard_dirs(embeddings):
        if (shard / EMBEDDING_ROWS_FILE).is_file():
            for _, row, problem in iter_jsonl(shard / EMBEDDING_ROWS_FILE):
                if not problem:
                    yield number, (row if isinstance(row, dict) else {})
                    number += 1


def _pairs(found: Found, wanted: set[str], section: Section) -> dict[str, dict[str, Any]]:
    """Captions and images of the sampled pairs, from the import-pairs output retrieve read."""
    source = found.config().get("pairs")
    shards = committed_shard_dirs(Path(source)) if source else []
    pairs = {}
    for shard in shards:
        for _, row, problem in iter_jsonl(shard / PAIRS_FILE):
            if not problem and isinstance(row, dict) and str(row.get("id")) in wanted:
                pairs[str(row["id"])] = row
    if len(pairs) < len(wanted):
        section.notes.append(f"{len(wanted) - len(pairs)} sampled pair(s) without their caption (the pairs "
                             f"retrieve read, {source or 'unknown'}, are not at hand as an import-pairs output)")
    return pairs


def _sample(row: dict[str, np.ndarray], pairs: dict[str, dict[str, Any]], texts: dict[int, str],
            thumbnails: _Thumbnails) -> str:
    pair_id = str(row["pair_ids"])
    pair = pairs.get(pair_id, {})
    images = []
    for image_id, score in zip(row["image_ids"].tolist(), row["image_scores"].tolist(), strict=True):
        if image_id:
            uri = thumbnails.uri(image_id)
            picture = f'<img src="{uri}" alt="{escape(image_id)}">' if uri else ""
            images.append(f'<div class="thumb">{picture}{escape(image_id)}<br>{score:.3f}</div>')
    sentences = [(texts.get(r, text_id), f"{score:.3f}") for text_id, score, r in
                 zip(row["text_ids"].tolist(), row["text_scores"].tolist(), row["text_rows"].tolist(), strict=True)
                 if text_id]
    return (f'<div class="sample" data-id="{escape(pair_id)}"><div class="caption">'
            f'{escape(pair.get("caption", pair_id))}</div><div class="source">{escape(pair_id)}'
            f'{" / image " + escape(pair["image"]) if "image" in pair else ""}</div>'
            f'<div class="thumbs">{"".join(images) or "no images retrieved"}</div>'
            + (table(("sentence", "score"), sentences) if sentences else "<p>no sentences retrieved</p>") + "</div>")


def _indexes(found: Found, section: Section) -> str:
    path = found.root / INDEX_REPORT
    if not path.is_file():
        section.notes.append(f"no {INDEX_REPORT}: the index kinds and recall are not known")
        return ""
    reports = read_json(path)
    rows = []
    for name, report in sorted(reports.items()):
        recall = next(((k, v) for k, v in report.items() if k.startswith("recall_at_")), None)
        measured = (f"{recall[0].removeprefix('recall_at_')}: {recall[1]:.4f} over {report.get('recall_queries', '?')} "
                    "queries" if recall else ("exact (recall 1)" if report.get("exact") else "not measured"))
        rows.append((name, report.get("index", "?"), f"{report.get('size', 0):,}", report.get("dim", "?"), measured))
    return "<h3>Indexes</h3>" + table(("collection", "index", "vectors", "dim", "recall@k"), rows)
