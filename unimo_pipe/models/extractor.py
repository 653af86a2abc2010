"""Running the detector over image files: decoding in DataLoader workers, batching, precision, device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from unimo_pipe.models.detector import BottomUpAttention, TestSettings, build_detector
from unimo_pipe.models.detector_weights import load_weights
from unimo_pipe.models.embedders import resolve_device
from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.formats import norm_boxes, uniter_soft_labels
from unimo_pipe.pipeline.images import load_rgb, shortest_edge_size

# A 1-pixel-wide image (resized from 1x3000) is too small for the stem's 3x3 max-pool; zero padding up to
# this is safe because every layer is re-zeroed outside each image's own size.
MIN_BATCH_SIDE = 32


class DecodedImages(Dataset):
    """(key, (BGR uint8 tensor (3, h, w) resized, original (width, height))) or (key, RecordError)."""

    def __init__(self, items: list[tuple[str, Path]], *, min_size: int, max_size: int, max_pixels: int):
        self.items = items
        self.min_size, self.max_size, self.max_pixels = min_size, max_size, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        key, path = self.items[index]
        try:
            image = load_rgb(path, max_pixels=self.max_pixels)
        except RecordError as error:
            return key, error
        width, height = image.size
        new_h, new_w = shortest_edge_size(height, width, self.min_size, self.max_size)
        resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))[:, :, ::-1]  # RGB -> BGR
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        return key, (tensor, (width, height))


def _as_list(batch: list) -> list:
    return batch


class RegionExtractor:
    def __init__(self, *, model: BottomUpAttention, device: str, precision: str, batch_size: int, workers: int,
                 min_size: int, max_size: int, max_pixels: int):
        self.device = device
        self.model = model.to(device)
        if device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.batch_size, self.workers = batch_size, workers
        self.decode_args = {"min_size": min_size, "max_size": max_size, "max_pixels": max_pixels}

    @classmethod
    def from_options(cls, options) -> RegionExtractor:
        settings = TestSettings(pre_nms_topk=options.pre_nms_topk, post_nms_topk=options.post_nms_topk,
                                class_nms=options.class_nms, conf_threshold=options.conf_threshold,
                                min_boxes=options.min_boxes, max_boxes=options.max_boxes)
        model = build_detector(options.detector, seed=options.seed, settings=settings)
        if options.weights is not None:
            load_weights(model, options.weights)
        device = resolve_device(options.device)
        precision = options.precision if options.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
        batch_size = options.batch_size or (8 if device.startswith("cuda") else 1)
        return cls(model=model, device=device, precision=precision, batch_size=batch_size,
                   workers=options.workers, min_size=options.min_size, max_size=options.max_size,
                   max_pixels=options.max_pixels)

    def run(self, items: list[tuple[str, Path]]) -> Iterator[tuple[str, Any]]:
        """(key, (arrays, meta)) per decoded image, (key, RecordError) per file that could not be read."""
        loader = DataLoader(DecodedImages(items, **self.decode_args), batch_size=self.batch_size,
                            num_workers=min(self.workers, len(items)), collate_fn=_as_list)
        for batch in loader:
            decoded = [(key, value) for key, value in batch if not isinstance(value, RecordError)]
            detections = self.detect([value for _, value in decoded]) if decoded else []
            results = dict(zip([key for key, _ in decoded], detections, strict=True))
            for key, value in batch:
                if isinstance(value, RecordError):
                    yield key, value
                    continue
                width, height = value[1]
                yield key, (region_arrays(results[key], width, height), {"width": width, "height": height})

    def detect(self, images: list[tuple[torch.Tensor, tuple[int, int]]]):
        """Detections per (resized BGR tensor, original (width, height)), boxes in original pixels."""
        sizes = [(t.shape[1], t.shape[2]) for t, _ in images]
        height = max(MIN_BATCH_SIDE, *(h for h, _ in sizes))
        width = max(MIN_BATCH_SIDE, *(w for _, w in sizes))
        batch = torch.zeros(len(images), 3, height, width, dtype=torch.float32)
        for i, (tensor, _) in enumerate(images):
            batch[i, :, : sizes[i][0], : sizes[i][1]] = tensor
        batch = batch.to(self.device, non_blocking=True)
        if self.device.startswith("cuda"):
            batch = batch.contiguous(memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model.detect(batch, sizes, [(height, width) for _, (width, height) in images])


def region_arrays(detections, width: int, height: int) -> dict[str, np.ndarray]:
    """UNITER's per-box arrays from one image's detections (original-image pixel boxes)."""
    boxes = detections.boxes.cpu().numpy().astype(np.float32)
    return {
        "features": detections.features.cpu().numpy().astype(np.float16),
        "norm_bb": norm_boxes(boxes, width, height).astype(np.float16),
        "conf": detections.conf.cpu().numpy().astype(np.float16),
        "soft_labels": uniter_soft_labels(detections.class_probs.cpu().numpy()).astype(np.float16),
        "boxes": boxes,
        "object_ids": detections.object_ids.cpu().numpy().astype(np.int32),
        "attr_ids": detections.attr_ids.cpu().numpy().astype(np.int32),
        "attr_conf": detections.attr_conf.cpu().numpy().astype(np.float16),
    }
