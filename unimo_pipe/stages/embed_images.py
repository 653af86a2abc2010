"""`embed-images`: one vector per image of an image collection, sharded with ids.

Sources are region-feature folders (extract-regions output in UNITER's layout: the mean, or the
confidence-weighted mean, of the kept boxes' features) or embedding files with ids (npy + .ids.txt,
npz, HDF5, parquet), e.g. CLIP embeddings. Per shard: embeddings.npy (float16, L2-normalised) and
rows.jsonl with {"id", "source"}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unimo_pipe.models.embedders import POOLING_MODES, ImageVectors, normalize_rows
from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.embedding_store import write_embedding_shard
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.stage import CommonOptions, Record, ShardContext, Stage


@dataclass
class EmbedImagesOptions(CommonOptions):
    image_collection: list[Path] = option([], help="region-feature folders or embedding files", required=True,
                                          must_exist=True, metavar="PATH")
    pooling: str = option("mean", help="how boxes become one vector", choices=POOLING_MODES)
    shard_size: int = option(50_000, help="images per shard", minimum=1)


class EmbedImages(Stage):
    name = "embed-images"
    summary = "pool region features (or read embedding files) into sharded image vectors with ids"
    options_class = EmbedImagesOptions

    def __init__(self) -> None:
        self._sources: dict[Path, ImageVectors] = {}

    def source(self, path: Path, pooling: str) -> ImageVectors:
        if path not in self._sources:
            self._sources[path] = ImageVectors(path, pooling=pooling)
        return self._sources[path]

    def iter_records(self, options: EmbedImagesOptions) -> Iterator[Record]:
        dims = {}
        for index, path in enumerate(options.image_collection):
            source = self.source(path, options.pooling)
            dims[path] = source.dim
            if len(set(dims.values())) > 1:
                sizes = ", ".join(f"{p}: {d}" for p, d in dims.items())
                raise UserError(f"image collections disagree on vector size ({sizes}): use stores made "
                                "by the same detector or embedding model")
            for key in source.keys():
                yield Record(key, index)

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: EmbedImagesOptions = ctx.options
        rows, vectors = [], []
        for record in records:
            path = options.image_collection[record.value]
            with ctx.record(record.key):
                source = self.source(path, options.pooling)
                vector = source.vector(record.key)
                if vector.shape != (source.dim,):
                    raise RecordError("dimension_mismatch", f"{vector.shape[0]} dimensions, the collection has "
                                      f"{source.dim}: features from another detector or model")
                normalised, usable = normalize_rows(vector[None, :])
                if not usable[0]:
                    raise RecordError("unusable_embedding", "non-finite or all-zero features")
                rows.append({"id": record.key, "source": str(path)})
                vectors.append(normalised[0])
        dim = vectors[0].shape[0] if vectors else 0
        write_embedding_shard(ctx.work_dir, rows, np.stack(vectors) if vectors else np.zeros((0, dim)))
