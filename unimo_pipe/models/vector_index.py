"""Nearest-neighbour indexes over L2-normalised vectors (inner product = cosine).

Kinds, registered by name: `flat` (FAISS exact), `ivf`, `hnsw`, `ivfsq` (IVF over 8/6/4-bit scalar codes),
`ivfpq` (FAISS approximate) and `torch` (exact chunked matmul + top-k in fp16, for a GPU without faiss-gpu).
`auto` picks exact when the vectors fit the memory budget, else the IVF encoding with the largest codes
that fit (scalar codes, else product codes sized to the budget). An approximate index's one search-time
knob (`nprobe`, `efSearch`) is tuned by `tune_search` to a recall target on a sample of queries against
their exact neighbours. Searches return (scores, rows) with row -1 where a collection has fewer
than k items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from unimo_pipe.pipeline.registry import Registry

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfsq", "ivfpq", "torch")
INDEXES = Registry("index type")
_ID_BYTES = 8  # an IVF list stores each vector's int64 id beside its code
_SQ_BITS = (8, 6, 4)


class VectorIndex:
    kind = "?"
    exact = False
    knob: str | None = None  # the search-time parameter that trades speed for recall, if any

    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0,
                 memory_budget_bytes: float | None = None):
        self.size, self.dim = vectors.shape
        self.device = device

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def knob_values(self) -> list[int]:
        """The knob's settings to try, cheapest (and least accurate) first."""
        return []

    def set_knob(self, value: int) -> None:
        raise NotImplementedError

    def encoding(self) -> dict[str, Any]:
        """How the vectors are stored: what indexes.json records beside the tuned search parameters."""
        return {"bytes_per_vector": 4 * self.dim}


class _FaissIndex(VectorIndex):
    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0,
                 memory_budget_bytes: float | None = None):
        super().__init__(vectors=vectors, device=device, seed=seed)
        import faiss

        self.memory_budget_bytes = memory_budget_bytes
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = self._make(faiss, vectors, seed)
        self._parameters = faiss.ParameterSpace()
        if device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self._parameters = faiss.GpuParameterSpace()
        index.add(vectors)
        self.index = index

    def _make(self, faiss, vectors: np.ndarray, seed: int):
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows

    def set_knob(self, value: int) -> None:
        self._parameters.set_index_parameter(self.index, self.knob, value)


class _IvfIndex(_FaissIndex):
    knob = "nprobe"

    def knob_values(self) -> list[int]:
        return _doubling(1, self.lists)

    def _quantized(self, faiss, vectors: np.ndarray, seed: int, make):
        self.lists = _ivf_lists(len(vectors))
        self._quantizer = faiss.IndexFlatIP(self.dim)  # kept alive alongside the index
        index = make(self._quantizer, self.lists)
        _train(index, vectors, self.lists, seed)
        index.nprobe = min(self.lists, 32)
        return index

    def encoding(self) -> dict[str, Any]:
        code = self.index.code_size if hasattr(self.index, "code_size") else 4 * self.dim
        return {"lists": self.lists, "bytes_per_vector": code + _ID_BYTES,
                "memory_bytes": int(self.size * (code + _ID_BYTES) + 4 * self.lists * self.dim)}


def _doubling(first: int, last: int) -> list[int]:
    values = [first]
    while values[-1] < last:
        values.append(min(2 * values[-1], last))
    return values


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
class IvfIndex(_IvfIndex):
    kind = "ivf"

    def _make(self, faiss, vectors, seed):
        return self._quantized(faiss, vectors, seed, lambda quantizer, lists: faiss.IndexIVFFlat(
            quantizer, self.dim, lists, faiss.METRIC_INNER_PRODUCT))


@INDEXES.register("ivfsq")
class IvfSqIndex(_IvfIndex):
    """IVF over scalar codes: the most bits per dimension (8, 6, 4) that fit the memory budget."""

    kind = "ivfsq"

    def _make(self, faiss, vectors, seed):
        self.bits = sq_bits(len(vectors), self.dim, self.memory_budget_bytes) or _SQ_BITS[-1]
        quantizer_type = getattr(faiss.ScalarQuantizer, f"QT_{self.bits}bit")
        return self._quantized(faiss, vectors, seed, lambda quantizer, lists: faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, lists, quantizer_type, faiss.METRIC_INNER_PRODUCT))

    def encoding(self) -> dict[str, Any]:
        return {"codes": f"SQ{self.bits}", **super().encoding()}


@INDEXES.register("ivfpq")
class IvfPqIndex(_IvfIndex):
    """IVF over product codes: dim/4 bytes per vector, fewer when the memory budget needs it."""

    kind = "ivfpq"

    def _make(self, faiss, vectors, seed):
        self.sub_quantizers = pq_sub_quantizers(len(vectors), self.dim, self.memory_budget_bytes)
        self.bits = 8 if len(vectors) >= 256 * 39 else 4
        index = self._quantized(faiss, vectors, seed, lambda quantizer, lists: faiss.IndexIVFPQ(
            quantizer, self.dim, lists, self.sub_quantizers, self.bits, faiss.METRIC_INNER_PRODUCT))
        return index

    def encoding(self) -> dict[str, Any]:
        return {"codes": f"PQ{self.sub_quantizers}x{self.bits}", **super().encoding()}


def _ivf_bytes(size: int, dim: int, code_bytes: float) -> float:
    return size * (code_bytes + _ID_BYTES) + 4 * _ivf_lists(size) * dim


def sq_bits(size: int, dim: int, budget: float | None) -> int | None:
    """The most bits per dimension of a scalar code whose IVF index fits `budget`; None: none fits."""
    for bits in _SQ_BITS:
        if budget is None or _ivf_bytes(size, dim, math.ceil(dim * bits / 8)) <= budget:
            return bits
    return None


def pq_sub_quantizers(size: int, dim: int, budget: float | None) -> int:
    """Sub-quantizers (bytes per vector) of a product code: the largest divisor of dim giving sub-vectors of
    at least 4 dimensions whose IVF index fits `budget` (the smallest, 1, if none does)."""
    divisors = [m for m in range(dim // 4, 0, -1) if dim % m == 0] or [1]
    return next((m for m in divisors if budget is None or _ivf_bytes(size, dim, m) <= budget), divisors[-1])


@INDEXES.register("hnsw")
class HnswIndex(_FaissIndex):
    kind = "hnsw"
    knob = "efSearch"

    def _make(self, faiss, vectors, seed):
        index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        return index

    def knob_values(self) -> list[int]:
        return _doubling(16, 4096)

    def encoding(self) -> dict[str, Any]:
        per_vector = 4 * self.dim + 2 * 32 * 4  # the vector and its level-0 links
        return {"links": 32, "bytes_per_vector": per_vector, "memory_bytes": self.size * per_vector}


@INDEXES.register("torch")
class TorchExactIndex(VectorIndex):
    """Exact search as chunked matmul + top-k; fp16 on GPU, fp32 on CPU."""

    kind, exact = "torch", True
    query_chunk = 4096

    def __init__(self, *, vectors: np.ndarray, device: str = "cpu", seed: int = 0,
                 memory_budget_bytes: float | None = None):
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
    """The index kind to build: `auto` means exact when it fits the budget, else IVF over scalar codes when
    4 bits a dimension fit, else IVF-PQ."""
    if requested != "auto":
        return requested
    if size * dim * 4 <= memory_budget_bytes:
        return "torch" if device.startswith("cuda") and not _faiss_has_gpu() else "flat"
    return "ivfsq" if sq_bits(size, dim, memory_budget_bytes) else "ivfpq"


def _faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def build_index(kind: str, vectors: np.ndarray, *, device: str = "cpu", seed: int = 0,
                memory_budget_bytes: float | None = None) -> VectorIndex:
    """An index of `kind`; compressed kinds size their codes to `memory_budget_bytes` (None: their default)."""
    return INDEXES.get(kind)(vectors=vectors, device=device, seed=seed, memory_budget_bytes=memory_budget_bytes)


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
    return recall_against(truth, found)


def recall_against(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean fraction of each row of `truth` that the same row of `found` holds."""
    if not len(truth) or not truth.shape[1]:
        return 1.0
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


@dataclass(frozen=True)
class Tuning:
    """What `tune_search` chose and measured."""

    knob: str
    value: int
    recall: float  # at the chosen value, on the sampled queries
    target_met: bool
    queries: int

    def report(self, k: int, target: float) -> dict[str, Any]:
        return {"target_recall": target, "search_params": {self.knob: self.value},
                f"recall_at_{k}": round(self.recall, 4), "recall_queries": self.queries,
                "target_met": self.target_met}


def tune_search(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, *, k: int, target: float,
                own_rows: np.ndarray | None = None) -> Tuning | None:
    """Set the index's knob to its cheapest value whose recall@k on `queries` (a sample like the real ones)
    against their exact top-k reaches `target`, else to its most accurate. Queries drawn from the
    collection name their `own_rows`, left out of both sides (they would be found for free). None for an
    index without a knob."""
    if index.knob is None or not len(queries):
        return None
    k = min(k, len(vectors) - (own_rows is not None))
    depth = k + (own_rows is not None)
    truth = _without_own_row(exact_search(vectors, queries, depth), own_rows, k)
    recall, value = 0.0, None
    for value in index.knob_values():
        index.set_knob(value)
        recall = recall_against(truth, _without_own_row(index.search(queries, depth)[1], own_rows, k))
        if recall >= target:
            break
    return Tuning(index.knob, value, recall, recall >= target, len(queries))


def _without_own_row(found: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """Each row's first k entries other than the query's own row (-1 padded)."""
    if own is None:
        return found[:, :k]
    kept = np.full((len(found), k), -1, dtype=np.int64)
    for i, (row, query_row) in enumerate(zip(found, own, strict=True)):
        others = row[row != query_row][:k]
        kept[i, : len(others)] = others
    return kept
