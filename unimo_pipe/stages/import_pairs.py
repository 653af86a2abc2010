"""`import-pairs`: read image-caption pairs from any supported format into clean, sharded JSONL.

Per shard: pairs.jsonl with {"id", "image", "caption", "split"?, "source"}. Captions are normalised
(Unicode NFC, whitespace); empty ones fail, over-long ones are cut at a word boundary and counted;
a repeated id (across all inputs) is skipped (`duplicate_id`), the first one kept; with --image-root, pairs
whose image file is absent or outside the root fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.formats import PAIRS_FILE, key_within
from unimo_pipe.pipeline.readers import CAPTION_FORMATS, iter_captions
from unimo_pipe.pipeline.stage import CommonOptions, Record, ShardContext, Stage
from unimo_pipe.pipeline.text import normalize_text, truncate_text

# The value of a record whose id was seen before. Marked in input order, so every worker agrees.
_DUPLICATE_ID = "duplicate_id"


@dataclass
class ImportPairsOptions(CommonOptions):
    captions: list[Path] = option([], help="caption files (COCO, Karpathy, TSV, JSONL or lines)", required=True,
                                  must_exist=True, metavar="FILE")
    format: str = option("auto", help="caption file format", choices=CAPTION_FORMATS)
    image_root: Path | None = option(None, help="folder the image names are relative to; "
                                     "if given, pairs whose image is missing fail", must_exist=True, metavar="DIR")
    splits: list[str] = option([], help="keep only these splits (Karpathy 'split' field), e.g. train,restval")
    max_caption_chars: int = option(1000, help="longer captions are cut at a word boundary", minimum=16)


class ImportPairs(Stage):
    name = "import-pairs"
    summary = "read image-caption pairs (COCO, Karpathy, TSV, JSONL) into clean sharded JSONL"
    options_class = ImportPairsOptions

    def iter_records(self, options: ImportPairsOptions) -> Iterator[Record]:
        seen: set[str] = set()
        for path in options.captions:
            for record in iter_captions(path, options.format):
                if record.error is None and record.key in seen:
                    record = Record(record.key, _DUPLICATE_ID)
                elif record.error is None:
                    seen.add(record.key)
                    record.value["source"] = path.name
                yield record

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ImportPairsOptions = ctx.options
        with ctx.path(PAIRS_FILE).open("w", encoding="utf-8") as out:
            for record in records:
                pair = record.value
                if pair == _DUPLICATE_ID:
                    ctx.stats.skip(_DUPLICATE_ID)
                    continue
                if options.splits and pair.get("split") not in options.splits:
                    ctx.stats.skip("other_split")
                    continue
                with ctx.record(record.key):
                    _clean_pair(pair, options, ctx)
                    out.write(json.dumps(pair, ensure_ascii=False) + "\n")


def _clean_pair(pair: dict, options: ImportPairsOptions, ctx: ShardContext) -> None:
    if not isinstance(pair["caption"], str):
        raise RecordError("malformed_caption", f"caption is a {type(pair['caption']).__name__}, not text")
    caption = normalize_text(pair["caption"])
    if not caption:
        raise RecordError("empty_caption")
    caption, truncated = truncate_text(caption, options.max_caption_chars)
    if truncated:
        ctx.stats.count("captions_truncated")
    if options.image_root is not None:
        if not pair["image"]:
            raise RecordError("missing_image", "the pair names no image")
        if key_within(options.image_root, pair["image"]) is None:
            raise RecordError("image_outside_root", f"{pair['image']} is outside --image-root {options.image_root}")
        if not (options.image_root / pair["image"]).is_file():
            raise RecordError("missing_image", f"{options.image_root / pair['image']} not found")
    pair["caption"] = caption
