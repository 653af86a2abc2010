"""Region-feature files other tools write, parsed into UNITER's per-box arrays.

- BUTD TSV (generate_tsv.py): image_id, image_w, image_h, num_boxes, boxes, features (base64 float32).
  It has no confidences or class distributions, so those fields are simply absent.
- LXMERT TSV (10 columns): img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes,
  boxes, features (ids int64, the rest float32, base64).
- npz: UNITER's (features, norm_bb, conf, soft_labels, ...) or BUTD-pytorch's (x, bbox, image_w, image_h).
  Pickled entries (such as an `info` dict) are never loaded.
- HDF5: what `unimo-pipe export-features --format h5` writes (one group per image, width/height attributes).
"""

from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError
from unimo_pipe.pipeline.formats import norm_boxes

BUTD_COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LXMERT_COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
                  "boxes", "features")


def _decode(field: str, text: str, dtype, rows: int, name: str) -> np.ndarray:
    try:
        array = np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
    except (binascii.Error, ValueError) as exc:
        raise RecordError("malformed_row", f"{name}: {field} is not base64 ({exc})") from None
    if rows == 0 or array.size % rows:
        raise RecordError("malformed_row", f"{name}: {field} holds {array.size} values for {rows} boxes")
    return array.reshape(rows, -1)


def _check_image_size(width: float, height: float, name: str) -> None:
    """Boxes are divided by the image size (norm_bb): a size that is not positive would store inf or NaN."""
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise RecordError("invalid_image_size", f"{name}: width {width}, height {height}; both must be > 0")


def parse_tsv_row(cells: list[str]) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(key, per-box arrays, per-image meta) from one BUTD (6 columns) or LXMERT (10 columns) row."""
    if len(cells) == len(BUTD_COLUMNS):
        row = dict(zip(BUTD_COLUMNS, cells, strict=True))
        key, width, height = row["image_id"], row["image_w"], row["image_h"]
    elif len(cells) == len(LXMERT_COLUMNS):
        row = dict(zip(LXMERT_COLUMNS, cells, strict=True))
        key, width, height = row["img_id"], row["img_w"], row["img_h"]
    else:
        raise RecordError("malformed_row", f"{len(cells)} columns: expected 6 (BUTD) or 10 (LXMERT)")
    try:
        width, height, n = float(width), float(height), int(row["num_boxes"])
    except ValueError:
        raise RecordError("malformed_row", f"{key}: width, height or num_boxes is not a number") from None
    _check_image_size(width, height, key)
    boxes = _decode("boxes", row["boxes"], np.float32, n, key)
    arrays = {"features": _decode("features", row["features"], np.float32, n, key),
              "norm_bb": norm_boxes(boxes, width, height), "boxes": boxes}
    if len(cells) == len(LXMERT_COLUMNS):
        arrays["conf"] = _decode("objects_conf", row["objects_conf"], np.float32, n, key)[:, 0]
        arrays["object_ids"] = _decode("objects_id", row["objects_id"], np.int64, n, key)[:, 0].astype(np.int32)
        arrays["attr_ids"] = _decode("attrs_id", row["attrs_id"], np.int64, n, key)[:, 0].astype(np.int32)
        arrays["attr_conf"] = _decode("attrs_conf", row["attrs_conf"], np.float32, n, key)[:, 0]
    return key, arrays, {"width": int(width), "height": int(height)}


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-box arrays and per-image meta from a UNITER- or BUTD-style npz (pickled entries skipped)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {}
            for name in data.files:
                try:
                    arrays[name] = data[name]
                except ValueError:  # an object array: would need pickle, which we never use
                    continue
    except (OSError, ValueError, EOFError) as exc:
        raise RecordError("corrupt_file", f"{path.name}: {exc}") from None
    if "features" in arrays and "norm_bb" in arrays:
        return {k: v for k, v in arrays.items() if np.ndim(v) >= 1 and len(v) == len(arrays["features"])}, {}
    if "x" in arrays and "bbox" in arrays and "image_w" in arrays and "image_h" in arrays:
        width, height = float(arrays["image_w"]), float(arrays["image_h"])
        _check_image_size(width, height, path.name)
        boxes = np.asarray(arrays["bbox"], dtype=np.float32)
        return ({"features": arrays["x"], "norm_bb": norm_boxes(boxes, width, height), "boxes": boxes},
                {"width": int(width), "height": int(height)})
    raise RecordError("unknown_npz_layout", f"{path.name}: keys {sorted(arrays)}; expected features+norm_bb "
                      "(UNITER) or x+bbox+image_w+image_h (BUTD)")
