"""Every on-disk contract between stages, defined once: file names, row shapes, schema versions, the
training manifest, UNITER's region layout, and how a pair's image name finds its region features.

A stage's output folder (the runner writes the layout, stages write the files inside a shard):
    OUT/stage.json, OUT/config.yaml, OUT/summary.json, OUT/input_problems.json (only when there are some),
    OUT/shards/NNNNN/{stats.json, the stage's files}, OUT/shards/NNNNN.partial/ while a shard is written,
    OUT/.lock-I-of-N (held by the process running shard selection I/N), OUT/.lock-finalize (around finalize)

Rows of the per-shard files that other stages read:
    import-pairs   pairs.jsonl      {"id", "image", "caption", ...}
    import-corpus  sentences.jsonl  {"id", "text", ...}
    augment        augment.jsonl    {"id", "caption", "positives": [{"text", "pivot", "method", "similarity"?}],
                                     "graph", "negatives": [{"text", "kind", "from", "to"}]} (parts as asked)
    retrieve       retrieval.npz    pair_ids (n,); image_ids, image_scores, text_ids, text_scores (n, k),
                                    best first, padded with '' / NaN; text_rows (n, k): each sentence's row
                                    in OUT/text_emb (its ids may repeat across corpora), -1 padded
                   retrieval.jsonl  (optional, for people) {"id", "images": [{"id", "score"}],
                                     "texts": [{"text", "id", "score"}]}
    embed-*        embeddings.npy + rows.jsonl  row i describes vector i: {"id", "text"} or {"id", "source"}
    generate       generations.jsonl {"id", "image" | "source", "text", "score"}
    shard          pairs.jsonl / texts.jsonl / images.jsonl, listed in OUT/manifest.json (TRAINING_SCHEMA_VERSION)

Region features are UNITER's: per box `norm_bb` = [x1/W, y1/H, x2/W, y2/H, w/W, h/H], the trainer's 7-d
location feature is norm_bb plus the normalised area, and soft labels put the background class first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.jsonl import write_json_atomic
from unimo_pipe.pipeline.sharding import shard_name

# -- the runner's layout of every stage output --
STAGE_RECORD = "stage.json"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
SHARDS_DIR = "shards"
STATS_FILE = "stats.json"
PARTIAL_SUFFIX = ".partial"
MERGED_FROM_FILE = "merged_from.json"  # in a `merge` destination: which stage output it came from
INPUT_PROBLEMS_FILE = "input_problems.json"  # bad rows of side inputs that `Stage.open` found
LOCK_PREFIX = ".lock-"  # flock files holding the pid and host of their holder; never deleted
FINALIZE_LOCK = LOCK_PREFIX + "finalize"


def selection_lock_name(index: int, count: int) -> str:
    """The lock file of the process that runs shards index, index + count, ... of an output folder."""
    return f"{LOCK_PREFIX}{index}-of-{count}"

# -- the merged region-feature store (extract-regions, import-features) --
# Inside OUT/feat_th*/ (so it moves with the LMDB): {shard name: images} of the shards the LMDB holds.
MERGED_SHARDS_FILE = "merged_shards.json"

# -- per-shard files other stages read --
PAIRS_FILE = "pairs.jsonl"
SENTENCES_FILE = "sentences.jsonl"
AUGMENT_FILE = "augment.jsonl"
RETRIEVAL_FILE = "retrieval.npz"
RETRIEVAL_VIEW_FILE = "retrieval.jsonl"
TEXT_EMBEDDINGS_DIR = "text_emb"  # retrieve's embedded corpus, whose row ids retrieval.npz's text_ids name
IMAGE_EMBEDDINGS_DIR = "image_emb"
GENERATIONS_FILE = "generations.jsonl"  # generate: {"id", "image" | "source", "text", "score"} per input
EMBEDDINGS_FILE = "embeddings.npy"
EMBEDDING_ROWS_FILE = "rows.jsonl"

# -- training shards --
TRAINING_SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
TRAINING_FILES = {"pair": "pairs.jsonl", "text": "texts.jsonl", "image": "images.jsonl"}


def shard_dir(out: Path, index: int) -> Path:
    return out / SHARDS_DIR / shard_name(index)


def is_committed(out: Path, index: int) -> bool:
    return (shard_dir(out, index) / STATS_FILE).is_file()


def committed_shard_dirs(out: Path) -> list[Path]:
    root = out / SHARDS_DIR
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.name.isdigit() and (d / STATS_FILE).is_file())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entries(out: Path, shard_dirs: list[Path]) -> list[dict[str, Any]]:
    """One manifest entry per training file of the shards: path (relative to `out`), kind, records, sha256."""
    files = []
    for shard in shard_dirs:
        for kind, name in TRAINING_FILES.items():
            path = shard / name
            if path.is_file():
                with path.open("rb") as f:
                    count = sum(1 for _ in f)
                files.append({"path": path.relative_to(out).as_posix(), "kind": kind, "records": count,
                              "sha256": sha256_of(path)})
    return files


def write_manifest(out: Path, files: list[dict[str, Any]], **fields: Any) -> None:
    """OUT/manifest.json: the schema version, totals per kind, every file, and the given fields."""
    totals = {kind: sum(f["records"] for f in files if f["kind"] == kind) for kind in TRAINING_FILES}
    write_json_atomic(out / MANIFEST_FILE, {"schema_version": TRAINING_SCHEMA_VERSION, "totals": totals,
                                            "files": files, **fields})


def load_manifest(shards_dir: Path, *, verify: bool = False) -> dict[str, Any]:
    """The manifest of a `shard` output, checked; `verify` also compares every file's sha256."""
    path = shards_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no manifest at {path}: is {shards_dir} a finished `unimo-pipe shard` output?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is corrupt (not JSON): rerun `unimo-pipe shard` with --overwrite") from None
    if manifest.get("schema_version") != TRAINING_SCHEMA_VERSION:
        raise UserError(f"{path} has schema version {manifest.get('schema_version')!r}, this unimo-pipe reads "
                        f"{TRAINING_SCHEMA_VERSION}: rebuild the shards with this version")
    for entry in manifest.get("files", []):
        file = shards_dir / entry["path"]
        if not file.is_file():
            raise UserError(f"{file} is listed in {path} but missing: restore it or rebuild the shards")
        if verify and sha256_of(file) != entry["sha256"]:
            raise UserError(f"{file} does not match its checksum in {path}: it changed or is corrupt; "
                            "rebuild the shards")
    return manifest


# -- UNITER's region layout --

def norm_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """UNITER's norm_bb (float32): [x1/W, y1/H, x2/W, y2/H, w/W, h/H] of pixel xyxy boxes."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] / width, boxes[:, 1] / height, boxes[:, 2] / width, boxes[:, 3] / height,
                     w / width, h / height], axis=1)


def box_features_7d(norm_bb: np.ndarray) -> np.ndarray:
    """UNITER's 7-d location feature: norm_bb plus the normalised area (w/W * h/H), in norm_bb's dtype
    (the area is computed in float32, so float16 boxes lose nothing more than their own rounding)."""
    wide = norm_bb.astype(np.float32)
    return np.concatenate([norm_bb, (wide[:, 4:5] * wide[:, 5:6]).astype(norm_bb.dtype)], axis=1)


def uniter_soft_labels(class_probs: np.ndarray) -> np.ndarray:
    """Class distributions in UNITER's column order, background first (the BUTD detector puts it last)."""
    return np.concatenate([class_probs[:, -1:], class_probs[:, :-1]], axis=1)


# -- image keys --

def printable_key(key: str) -> str:
    """`key` as it can be stored (LMDB keys and JSON are UTF-8) and printed: unchanged, unless it holds
    bytes of a file name that are not UTF-8 (surrogate escapes), shown as \\xNN. A key this changes
    cannot be stored: its record is an `undecodable_file_name` failure."""
    try:
        raw = key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system made
        raw = key.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def undecodable_name_error(key: str) -> RecordError | None:
    """The failure of a record whose key (a file name) cannot be stored, else None."""
    if printable_key(key) == key:
        return None
    return RecordError("undecodable_file_name", "the name is not UTF-8, which LMDB keys and JSON need: rename the file")


def key_within(root: Path, name: str | Path) -> str | None:
    """`name` (relative to `root`, or absolute) as a posix path relative to `root`; None when it leaves `root`.

    Lexical, following no symlinks, so a folder of symlinks to images elsewhere still counts as inside.
    """
    base = os.path.abspath(root)
    full = os.path.normpath(os.path.join(base, name))
    if full == base or os.path.commonpath([full, base]) != base:
        return None
    return Path(os.path.relpath(full, base)).as_posix()


class ImageKeys:
    """Find the store key of an image a pair names, by the first of these steps that finds any key:
    the exact key; the same path with another extension ("val/x.jpg" ~ "val/x.npz"); the same file name
    ("val2014/x.jpg" ~ "x.jpg"); the same file stem ("x.jpg" ~ "x.npz").

    More than one candidate at that step is an `ambiguous_image` failure naming them, never a silent pick.
    """

    def __init__(self, keys: Iterable[str], *, store: str = "the feature store"):
        self.store = store
        self._exact = set(keys)
        self._tables: tuple[dict[str, list[str]], ...] = ({}, {}, {})
        for key in sorted(self._exact):
            for table, probe in zip(self._tables, _probes(key), strict=True):
                table.setdefault(probe, []).append(key)

    def __len__(self) -> int:
        return len(self._exact)

    def candidates(self, image: Any) -> list[str]:
        """Every stored key the first matching step finds for `image` (none: an empty list)."""
        name = str(image or "")
        if name in self._exact:
            return [name]
        if not Path(name).name:
            return []
        for table, probe in zip(self._tables, _probes(name), strict=True):
            if probe in table:
                return table[probe]
        return []

    def resolve(self, image: Any) -> str:
        """The store key for `image`; RecordError `image_not_in_features` or `ambiguous_image` otherwise."""
        found = self.candidates(image)
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise RecordError("ambiguous_image", f"{image} matches several images of {self.store}: {shown}; "
                              "name the image by its full key")
        raise RecordError("image_not_in_features", f"{image} is not in {self.store}")


def _probes(key: str) -> tuple[str, str, str]:
    """What a key is looked up by at each step after the exact one: path without extension, name, stem."""
    path = Path(key)
    return path.with_suffix("").as_posix(), path.name, path.stem
