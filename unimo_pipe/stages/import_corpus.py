"""`import-corpus`: read text corpora into clean, de-duplicated, sharded sentences.

Per shard: sentences.jsonl with {"id", "text"}; id is "<file stem>:<line>" (":<line>.<k>" for the k-th
sentence of a document). Exact duplicates (after normalisation) are skipped, not failed, and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.formats import SENTENCES_FILE
from unimo_pipe.pipeline.readers import CORPUS_UNITS, iter_corpus
from unimo_pipe.pipeline.stage import CommonOptions, Record, ShardContext, Stage
from unimo_pipe.pipeline.text import normalize_text, truncate_text


@dataclass
class ImportCorpusOptions(CommonOptions):
    text_corpus: list[Path] = option([], help="text files, one sentence (or document) per line", required=True,
                                     must_exist=True, metavar="FILE")
    unit: str = option("sentence", help="what one line holds; documents are split into sentences",
                       choices=CORPUS_UNITS)
    min_words: int = option(3, help="shorter sentences are skipped", minimum=1)
    max_chars: int = option(1000, help="longer sentences are cut at a word boundary", minimum=16)
    dedupe: bool = option(True, help="skip exact duplicate sentences (after normalisation)")
    shard_size: int = option(100_000, help="sentences per shard", minimum=1)


class ImportCorpus(Stage):
    name = "import-corpus"
    summary = "read text corpora (sentence or document per line) into clean sharded sentences"
    options_class = ImportCorpusOptions

    def iter_records(self, options: ImportCorpusOptions) -> Iterator[Record]:
        # Duplicates are marked here, in global input order, so every worker agrees on which copy stays.
        seen: set[bytes] = set()
        for path in options.text_corpus:
            for record in iter_corpus(path, options.unit):
                if record.error is not None:
                    yield record
                    continue
                text = normalize_text(record.value)
                digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
                duplicate = options.dedupe and digest in seen
                seen.add(digest)
                yield Record(record.key, {"text": text, "duplicate": duplicate})

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ImportCorpusOptions = ctx.options
        with ctx.path(SENTENCES_FILE).open("w", encoding="utf-8") as out:
            for record in records:
                text = record.value["text"]
                if record.value["duplicate"]:
                    ctx.stats.skip("duplicate")
                elif len(text.split()) < options.min_words:
                    ctx.stats.skip("too_short")
                else:
                    with ctx.record(record.key):
                        out.write(json.dumps({"id": record.key, "text": _cut(text, options, ctx)},
                                             ensure_ascii=False) + "\n")


def _cut(text: str, options: ImportCorpusOptions, ctx: ShardContext) -> str:
    if not text:
        raise RecordError("empty_text")
    text, truncated = truncate_text(text, options.max_chars)
    if truncated:
        ctx.stats.count("sentences_truncated")
    return text
