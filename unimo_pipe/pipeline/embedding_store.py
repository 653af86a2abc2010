"""Embedding shards (like clip-retrieval's text_emb/): embeddings.npy (float16, L2-normalised) + rows.jsonl.

Row i of rows.jsonl describes row i of embeddings.npy. A finished embedding stage output loads as
one table, in shard order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import EMBEDDING_ROWS_FILE, EMBEDDINGS_FILE
from unimo_pipe.pipeline.jsonl import iter_jsonl


@dataclass
class EmbeddingTable:
    rows: list[dict[str, Any]]
    vectors: np.ndarray  # float32 (n, d)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def write_embedding_shard(work_dir: Path, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
    """One shard's (rows, dim) float16 vectors and their rows; a shard of no usable rows is (0, dim) or (0, 0)."""
    vectors = np.asarray(vectors, dtype=np.float16)
    np.save(work_dir / EMBEDDINGS_FILE, vectors if vectors.ndim == 2 else vectors.reshape(len(rows), -1 if rows else 0))
    with (work_dir / EMBEDDING_ROWS_FILE).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_embedding_output(out: Path) -> EmbeddingTable:
    """Every row and vector of a finished embed-text / embed-images output folder."""
    from unimo_pipe.pipeline.outputs import complete_shard_dirs

    rows: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    for shard in complete_shard_dirs(out):
        vectors = np.load(shard / EMBEDDINGS_FILE, allow_pickle=False)
        shard_rows = [row for _, row, problem in iter_jsonl(shard / EMBEDDING_ROWS_FILE) if not problem]
        if len(shard_rows) != len(vectors):
            raise UserError(f"{shard} is corrupt ({len(shard_rows)} rows, {len(vectors)} vectors): "
                            "rerun the embedding stage with --overwrite")
        rows.extend(shard_rows)
        if len(vectors):
            parts.append(vectors.astype(np.float32))
    dim = parts[0].shape[1] if parts else 0
    return EmbeddingTable(rows, np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))
