"""The trainer's data layer: training shards (from `unimo-pipe shard`) as PyTorch datasets and batches.

- `Examples` indexes one kind of record (pair / text / image) across the shards a checked manifest lists
  (`pipeline.formats.load_manifest`), by byte offset, and reads one record on demand; region features come
  from the LMDB, opened per worker process.
- `BatchPlan` decides, for a (seed, epoch, rank, world size), which examples form which batch: a
  deterministic permutation, split across ranks (disjoint and complete), bucketed by text length +
  number of boxes, resumable from any step (`batches(epoch, start_step)`).
- Each example samples its k positives / negatives / retrieved images / retrieved texts with an RNG
  seeded by (seed, epoch, index), so a resumed run sees exactly the batches it would have seen.
- `Collator.pairs`, `.texts` and `.images` tokenise (one batched call per field) and pad into tensors
  with masks; region features stay float16 until the GPU; the 7-d box feature is norm_bb plus area.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import ImageKeys, box_features_7d, load_manifest


class Examples:
    """Records of one kind across all shards, by index, with region features on demand (the Collator
    tokenises)."""

    def __init__(self, shards_dir: Path, kind: str, *, max_regions: int = 100, feature_dir: Path | None = None):
        manifest = load_manifest(shards_dir)
        self.entries = [e for e in manifest["files"] if e["kind"] == kind]
        self.files = [shards_dir / e["path"] for e in self.entries]
        self.kind = kind
        self.max_regions = max_regions
        feature_dir = feature_dir or (Path(manifest["image_features"]) if manifest.get("image_features") else None)
        if kind == "image" and feature_dir is None and manifest.get("image_collections"):
            feature_dir = Path(manifest["image_collections"][0])
        self.feature_dir = feature_dir
        self._features = None
        self._image_keys = None
        self.locations, self.text_lengths, self.keys = self._index()

    def _index(self) -> tuple[list[tuple[int, int]], np.ndarray, list[str]]:
        """Every record's place, text length and image key; each file is checked against its manifest entry
        (records and sha256) on the way, as it is read whole anyway."""
        locations, lengths, keys = [], [], []
        for file_index, (path, entry) in enumerate(zip(self.files, self.entries, strict=True)):
            offset, digest, line_number = 0, hashlib.sha256(), 0
            with path.open("rb") as f:
                for line_number, line in enumerate(f, start=1):
                    digest.update(line)
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise UserError(f"{path} line {line_number} is corrupt: rebuild the shards") from None
                    locations.append((file_index, offset))
                    text = row.get("caption") or row.get("text") or ""
                    lengths.append(len(text.split()))
                    keys.append(row.get("image") or row.get("id"))
                    offset += len(line)
            if line_number != entry["records"] or digest.hexdigest() != entry["sha256"]:
                raise UserError(f"{path} does not match its manifest entry ({line_number} records, manifest "
                                f"{entry['records']}; or its sha256 differs): it was truncated or changed after "
                                "`unimo-pipe shard` wrote it; rebuild the shards")
        return locations, np.asarray(lengths, dtype=np.int32), keys

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def features(self):
        """The region-feature reader, opened lazily (so again in each DataLoader worker)."""
        if self._features is None and self.feature_dir is not None:
            from unimo_pipe.pipeline.feature_store import open_feature_dir

            self._features = open_feature_dir(self.feature_dir)
        return self._features

    def box_counts(self) -> np.ndarray:
        if self.kind == "text" or self.features is None:
            return np.zeros(len(self), dtype=np.int32)
        nbb = self.features.name2nbb
        found = [self.image_keys.candidates(k) for k in self.keys]
        return np.asarray([min(nbb[c[0]], self.max_regions) if len(c) == 1 else 0 for c in found], dtype=np.int32)

    @property
    def image_keys(self) -> ImageKeys:
        """The feature store's images, found as every stage finds them (exact key, then unique name or stem)."""
        if self._image_keys is None:
            self._image_keys = ImageKeys(self.features.name2nbb, store=str(self.feature_dir))
        return self._image_keys

    def row(self, index: int) -> dict[str, Any]:
        file_index, offset = self.locations[index]
        with self.files[file_index].open("rb") as f:
            f.seek(offset)
            return json.loads(f.readline())

    def regions(self, image: str) -> dict[str, np.ndarray]:
        try:
            key = self.image_keys.resolve(image)
        except RecordError as exc:
            raise UserError(f"{exc.detail}: train with the feature store the shards were made with (`shard "
                            "--image-features`), or rebuild the shards") from None
        return read_regions(self.features, key, self.max_regions)


def read_regions(features, key: str, max_regions: int) -> dict[str, np.ndarray]:
    """float16 features (R, D) and float16 7-d boxes (R, 7) of one image of a region-feature reader, at
    most max_regions. A value that does not decode is one clear error naming the image and the store."""
    try:
        nbb = min(features.name2nbb[key], max_regions)
        dump = features.db.get_arrays(key, ("features", "norm_bb", "soft_labels"), nbb)  # decodes those only
        boxes = box_features_7d(dump["norm_bb"].astype(np.float16))
        regions = {"features": dump["features"].astype(np.float16), "boxes": boxes}
        if "soft_labels" in dump:  # the detector's class distribution, for masked region classification (KL)
            regions["soft_labels"] = dump["soft_labels"].astype(np.float16)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise UserError(f"the region features of {key!r} in {features.root} are damaged ({type(exc).__name__}): "
                        "extract or import them again") from None
    return regions


@dataclass(frozen=True)
class Sampling:
    """How many of each kind of augmentation one pair brings to a step."""

    positives: int = 1
    negatives: int = 4
    retrieved_images: int = 1
    retrieved_texts: int = 1


class PairDataset:
    """Map-style dataset of pair examples; sampling depends only on (seed, epoch, index)."""

    def __init__(self, examples: Examples, *, sampling: Sampling = Sampling(), seed: int = 0):
        self.examples, self.sampling, self.seed = examples, sampling, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex, s = self.examples, self.sampling
        row = ex.row(index)
        rng = random.Random(hash((self.seed, self.epoch, index)))
        pick = lambda items, k: rng.sample(items, min(k, len(items)))  # noqa: E731
        item = {"index": index, "id": row["id"], "text": row["caption"],
                "positives": pick(row.get("positives", []), s.positives),
                "negatives": [n["text"] for n in pick(row.get("negatives", []), s.negatives)],
                "retrieved_texts": [t["text"] for t in pick(row.get("retrieved_texts", []), s.retrieved_texts)]}
        item.update(ex.regions(row["image"]))
        candidates = [r["id"] for r in row.get("retrieved_images", []) if len(ex.image_keys.candidates(r["id"])) == 1]
        item["retrieved_images"] = [ex.regions(k) for k in pick(candidates, s.retrieved_images)]
        return item


class _SingleModalDataset:
    """Text-only or image-only examples: the row's id plus its text or its regions."""

    def __init__(self, examples: Examples):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.examples.row(index)
        return {"index": index, "id": row["id"], **self._content(row)}

    def _content(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class TextDataset(_SingleModalDataset):
    def _content(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"text": row["text"]}


class ImageDataset(_SingleModalDataset):
    def _content(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.examples.regions(row["id"])


class BatchPlan:
    """Deterministic, rank-partitioned, length-bucketed batches; a `torch.utils.data.Sampler` of batches."""

    def __init__(self, sizes: np.ndarray, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 bucket_batches: int = 50):
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in 0..{world_size - 1}")
        self.sizes = np.asarray(sizes)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.bucket_batches = seed, bucket_batches
        self.epoch, self.start_step = 0, 0

    def rank_indices(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.sizes))
        return order[self.rank :: self.world_size]

    def batches(self, epoch: int, start_step: int = 0) -> list[list[int]]:
        """This rank's batches for an epoch, from `start_step` on."""
        indices = self.rank_indices(epoch)
        rng = np.random.default_rng((self.seed, epoch, self.rank, 1))
        window = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(indices), window):
            chunk = indices[start : start + window]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]  # similar sizes share a batch
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order][start_step:]

    def set_position(self, epoch: int, step: int = 0) -> None:
        self.epoch, self.start_step = epoch, step

    def __iter__(self):
        return iter(self.batches(self.epoch, self.start_step))

    def __len__(self) -> int:
        per_rank = len(self.rank_indices(self.epoch))
        return max(0, -(-per_rank // self.batch_size) - self.start_step)


def _tokenise(texts: list[str], tokenizer, max_tokens: int):
    """Token ids (N, T) and mask, in one batched call of the (fast) tokenizer."""
    import torch

    if not texts:
        return torch.zeros((0, 1), dtype=torch.long), torch.zeros((0, 1), dtype=torch.bool)
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"].bool()


def _pad_soft_labels(images: list[dict[str, np.ndarray]], count: int):
    """(B, R, C) float16 soft labels when every image has them, else None."""
    import torch

    if not images or any("soft_labels" not in im for im in images):
        return None
    labels = torch.zeros((len(images), count, images[0]["soft_labels"].shape[1]), dtype=torch.float16)
    for i, im in enumerate(images):
        labels[i, : len(im["soft_labels"])] = torch.from_numpy(im["soft_labels"])
    return labels


def _pad_regions(images: list[dict[str, np.ndarray]]):
    import torch

    count = max((len(im["features"]) for im in images), default=1) or 1
    dim = images[0]["features"].shape[1] if images else 1
    features = torch.zeros((len(images), count, dim), dtype=torch.float16)
    boxes = torch.zeros((len(images), count, 7), dtype=torch.float16)
    mask = torch.zeros((len(images), count), dtype=torch.bool)
    for i, im in enumerate(images):
        n = len(im["features"])
        features[i, :n] = torch.from_numpy(im["features"])
        boxes[i, :n] = torch.from_numpy(im["boxes"])
        mask[i, :n] = True
    return features, boxes, mask


def _owners(groups: list[list]) -> Any:
    import torch

    return torch.tensor([i for i, group in enumerate(groups) for _ in group], dtype=torch.long)


class Collator:
    """Pads a list of examples into tensors; text is tokenised here, one batched call per field."""

    def __init__(self, tokenizer, *, max_text_tokens: int = 512):
        self.tokenizer, self.max_text_tokens = tokenizer, max_text_tokens

    def _text(self, batch: dict, name: str, texts: list[str]) -> None:
        batch[f"{name}_ids"], batch[f"{name}_mask"] = _tokenise(texts, self.tokenizer, self.max_text_tokens)

    def pairs(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pairs plus their flattened augmentations; `*_owner` gives each augmentation's pair row."""
        batch: dict[str, Any] = {"index": [it["index"] for it in items]}
        self._text(batch, "text", [it["text"] for it in items])
        batch["region_features"], batch["region_boxes"], batch["region_mask"] = _pad_regions(items)
        _add_soft_labels(batch, items)
        for name in ("positives", "negatives", "retrieved_texts"):
            groups = [it[name] for it in items]
            self._text(batch, name, [t for g in groups for t in g])
            batch[f"{name}_owner"] = _owners(groups)
            batch[f"{name}_per_pair"] = max(map(len, groups), default=0)  # lets the trainer size without a sync
        groups = [it["retrieved_images"] for it in items]
        (batch["retrieved_features"], batch["retrieved_boxes"],
         batch["retrieved_region_mask"]) = _pad_regions([im for g in groups for im in g])
        batch["retrieved_images_owner"] = _owners(groups)
        batch["retrieved_images_per_pair"] = max(map(len, groups), default=0)
        return batch

    def texts(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"index": [it["index"] for it in items]}
        self._text(batch, "text", [it["text"] for it in items])
        return batch

    def labelled(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Image-text or text examples with a class index each (classification fine-tuning)."""
        import torch

        batch: dict[str, Any] = {"index": [it["index"] for it in items]}
        self._text(batch, "text", [it["text"] for it in items])
        if items and "features" in items[0]:
            batch["region_features"], batch["region_boxes"], batch["region_mask"] = _pad_regions(items)
        numeric = bool(items) and isinstance(items[0]["label"], float)  # regression targets (STS-B)
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.float if numeric else torch.long)
        return batch

    @staticmethod
    def images(items: list[dict[str, Any]]) -> dict[str, Any]:
        features, boxes, mask = _pad_regions(items)
        batch = {"index": [it["index"] for it in items], "region_features": features, "region_boxes": boxes,
                 "region_mask": mask}
        _add_soft_labels(batch, items)
        return batch


def _add_soft_labels(batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
    labels = _pad_soft_labels(items, batch["region_features"].shape[1])
    if labels is not None:
        batch["region_soft_labels"] = labels


def batch_to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """A collated batch with its tensors on `device` (asynchronous from pinned memory)."""
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_loader(dataset, plan: BatchPlan, collate, *, workers: int = 2, pin_memory: bool | None = None):
    """A DataLoader over `plan`'s batches (call plan.set_position(epoch, step) to resume)."""
    import torch
    from torch.utils.data import DataLoader

    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    # Its own generator: a DataLoader otherwise draws its seed from the global RNG, which would shift
    # the training step's dropout whenever a loader is created (e.g. on resume), breaking exact resume.
    return DataLoader(dataset, batch_sampler=plan, collate_fn=collate, num_workers=workers, pin_memory=pin,
                      persistent_workers=False, generator=torch.Generator().manual_seed(plan.seed))
