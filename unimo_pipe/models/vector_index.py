"""Nearest-neighbour indexes over L2-normalised vectors (inner product = cosine).

Kinds, registered by name: `flat` (FAISS exact), `ivf`, `hnsw`, `ivfpq` (FAISS approximate) and
`torch` (exact chunked matmul + top-k in fp16, for a GPU without faiss-gpu). `auto` picks exact when
the vectors fit the memory budget, else IVF-PQ. Searches return (scores, rows) with row -1 where a
collection has fewer than k items.
"""

from __future__ import annotations

import math

import numpy as np

from unimo_pipe.pipeline.registry import Registry

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq", "torch")
INDEXES = Registry("index type")


class VectorIndex:
    kind = "?"
    exact = False

    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0):
        self.size, self.dim = vectors.shape
        self.device = device

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class _FaissIndex(VectorIndex):
    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0):
        super().__init__(vectors=vectors, device=device, seed=seed)
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = self._make(faiss, vectors, seed)
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        index.add(vectors)
        self.index = index

    def _make(self, faiss, vectors: np.ndarray, seed: int):
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows


def _ivf_lists(n: int) -> int:
    # About 4 sqrt(n) lists, but at least 39 training points per list (FAISS's own minimum).
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _train(index, vectors: np.ndarray, lists: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(len(vectors), lists * 256), replace=False)]
    index.train(sample)


@INDEXES.register("flat")
class FlatIndex(_FaissIndex):
    kind, exact = "flat", True

    def _make(self, faiss, vectors, seed):
        return faiss.IndexFlatIP(self.dim)


@INDEXES.register("ivf")
class IvfIndex(_FaissIndex):
    kind = "ivf"

    def _make(self, faiss, vectors, seed):
        lists = _ivf_lists(len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists, faiss.METRIC_INNER_PRODUCT)
        _train(index, vectors, lists, seed)
        index.nprobe = min(lists, 32)
        self._quantizer = index.quantizer  # keep it alive alongside the index
        return index


@INDEXES.register("ivfpq")
class IvfPqIndex(_FaissIndex):
    kind = "ivfpq"

    def _make(self, faiss, vectors, seed):
        lists = _ivf_lists(len(vectors))
        sub_quantizers = _pq_sub_quantizers(self.dim)
        bits = 8 if len(vectors) >= 256 * 39 else 4
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, lists, sub_quantizers, bits,
                                 faiss.METRIC_INNER_PRODUCT)
        _train(index, vectors, max(lists, 2**bits), seed)
        index.nprobe = min(lists, 32)
        self._quantizer = index.quantizer
        return index


def _pq_sub_quantizers(dim: int) -> int:
    """Largest divisor of dim giving sub-vectors of at least 4 dimensions (so dim/4 bytes per vector)."""
    for m in range(dim // 4, 0, -1):
        if dim % m == 0:
            return m
    return 1


@INDEXES.register("hnsw")
class HnswIndex(_FaissIndex):
    kind = "hnsw"

    def _make(self, faiss, vectors, seed):
        index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        return index


@INDEXES.register("torch")
class TorchExactIndex(VectorIndex):
    """Exact search as chunked matmul + top-k; fp16 on GPU, fp32 on CPU."""

    kind, exact = "torch", True
    query_chunk = 4096

    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0):
        super().__init__(vectors=vectors, device=device, seed=seed)
        import torch

        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.vectors = torch.as_tensor(vectors).to(device=device, dtype=self.dtype)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        take = min(k, self.size)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, len(queries), self.query_chunk):
                chunk = torch.as_tensor(queries[start : start + self.query_chunk]).to(self.vectors.device, self.dtype)
                top = torch.topk(chunk @ self.vectors.T, take, dim=1)
                scores[start : start + len(chunk), :take] = top.values.float().cpu().numpy()
                rows[start : start + len(chunk), :take] = top.indices.cpu().numpy()
        return scores, rows


def choose_kind(requested: str, *, size: int, dim: int, memory_budget_bytes: float, device: str) -> str:
    """The index kind to build: `auto` means exact when it fits the budget, else IVF-PQ."""
    if requested != "auto":
        return requested
    if size * dim * 4 <= memory_budget_bytes:
        return "torch" if device.startswith("cuda") and not _faiss_has_gpu() else "flat"
    return "ivfpq"


def _faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def build_index(kind: str, vectors: np.ndarray, *, device: str = "cpu", seed: int = 0) -> VectorIndex:
    return INDEXES.get(kind)(vectors=vectors, device=device, seed=seed)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Rows of the exact top-k by brute force in numpy (the reference for recall)."""
    k = min(k, len(vectors))
    result = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        result[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return result


def measure_recall(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the index also returns, over `queries`."""
    k = min(k, len(vectors))
    truth = exact_search(vectors, queries, k)
    _, found = index.search(queries, k)
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0
