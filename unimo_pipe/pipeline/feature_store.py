"""Region features in UNITER's image-db layout, which UNITER's `DetectFeatLmdb` reads unchanged.

    ROOT/feat_th{conf}_max{max}_min{min}/   LMDB: image file name -> msgpack dict of per-box arrays
    ROOT/nbb_th{conf}_max{max}_min{min}.json   {image file name: number of boxes}
    ROOT/img_meta_th{conf}_max{max}_min{min}.json   {image file name: per-image values} (ours)

Values: `features` (N, D) f16, `norm_bb` (N, 6) f16 = [x1/W, y1/H, x2/W, y2/H, w/W, h/H], `conf` (N,) f16,
`soft_labels` (N, C) f16 (conf and soft_labels only where the source has them: imported BUTD TSVs do
not), plus any extra per-box arrays (first dimension N). UNITER slices every value
with `[:nbb]`, so per-image scalars must not go in the LMDB value: they go in the img_meta sidecar.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.formats import MERGED_SHARDS_FILE, STATS_FILE
from unimo_pipe.pipeline.jsonl import read_json, write_json_atomic
from unimo_pipe.pipeline.lmdb_store import LmdbReader, LmdbWriter
from unimo_pipe.pipeline.visual_genome import names_of

logger = logging.getLogger("unimo_pipe")

UNITER_FIELDS = ("features", "norm_bb", "conf", "soft_labels")  # stored as float16
REQUIRED_FIELDS = ("features", "norm_bb")  # what DetectFeatLmdb.__getitem__ reads


def _suffix(conf_th: float, max_bb: int, min_bb: int) -> str:
    return f"th{conf_th}_max{max_bb}_min{min_bb}"


def feature_db_name(conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10) -> str:
    return f"feat_{_suffix(conf_th, max_bb, min_bb)}"


def nbb_file_name(conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10) -> str:
    return f"nbb_{_suffix(conf_th, max_bb, min_bb)}.json"


def meta_file_name(conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10) -> str:
    return f"img_meta_{_suffix(conf_th, max_bb, min_bb)}.json"


def validate_region_arrays(arrays: dict[str, np.ndarray]) -> int:
    """Check the per-box arrays agree on N and have the right ranks; return N."""
    missing = [f for f in REQUIRED_FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"region features lack {', '.join(missing)}")
    n = len(arrays["features"])
    expected_rank = {"features": 2, "norm_bb": 2, "conf": 1, "soft_labels": 2}
    for name, array in arrays.items():
        if np.ndim(array) == 0 or len(array) != n:
            raise ValueError(f"region field {name!r} must have first dimension {n} (one row per box)")
        if name in expected_rank and np.ndim(array) != expected_rank[name]:
            raise ValueError(f"region field {name!r} must have rank {expected_rank[name]}")
    if arrays["norm_bb"].shape[1] != 6:
        raise ValueError("norm_bb must have 6 columns: x1/W, y1/H, x2/W, y2/H, w/W, h/H")
    return n


class RegionFeatureWriter:
    """Write one image-db; `close()` writes the nbb and img_meta sidecars after the LMDB."""

    def __init__(self, root: Path, *, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10, **lmdb_args):
        self.root = root
        self.suffix_args = (conf_th, max_bb, min_bb)
        self._db = LmdbWriter(root / feature_db_name(*self.suffix_args), **lmdb_args)
        self.name2nbb: dict[str, int] = {}
        self.meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Store one image's per-box arrays (ValueError if they disagree; RecordError if NaN or inf)."""
        n = validate_region_arrays(arrays)
        value = {k: _as_stored(k, np.asarray(v)) for k, v in arrays.items()}
        _check_finite(value)
        self._db.put(name, value)
        self.name2nbb[name] = n
        if meta:
            self.meta[name] = meta

    def close(self) -> None:
        self._db.close()
        write_json_atomic(self.root / nbb_file_name(*self.suffix_args), self.name2nbb)
        if self.meta:
            write_json_atomic(self.root / meta_file_name(*self.suffix_args), self.meta)

    def __enter__(self) -> RegionFeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def _check_finite(stored: dict[str, np.ndarray]) -> None:
    """NaN or inf (also a float32 value past float16's range) would poison every batch it joins."""
    bad = [name for name, array in stored.items() if array.dtype.kind == "f" and not np.isfinite(array).all()]
    if bad:
        raise RecordError("non_finite_values", f"NaN or inf in {', '.join(bad)} as stored "
                          "(UNITER's fields are float16, largest 65504)")


def _as_stored(name: str, array: np.ndarray) -> np.ndarray:
    """UNITER's four fields are float16; extra fields keep the dtype they were given."""
    return array.astype(np.float16) if name in UNITER_FIELDS else array


class RegionFeatureReader:
    """Reads an image-db the way UNITER's `DetectFeatLmdb(img_dir, conf_th, max_bb, min_bb)` does."""

    def __init__(self, root: Path, conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10):
        self.root = root
        self.suffix_args = (conf_th, max_bb, min_bb)
        db_path = root / feature_db_name(conf_th, max_bb, min_bb)
        nbb_path = root / nbb_file_name(conf_th, max_bb, min_bb)
        self.db = LmdbReader(db_path)
        self.name2nbb: dict[str, int] = json.loads(nbb_path.read_text()) if nbb_path.exists() else {}
        meta_path = root / meta_file_name(conf_th, max_bb, min_bb)
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}

    def get_dump(self, name: str, fields: tuple[str, ...] | None = None, *, names: bool = False
                 ) -> dict[str, np.ndarray]:
        """The stored arrays (or only `fields`, those stored), f16 widened to f32, cut to the image's number of
        boxes; only the fields asked for are decoded, and they are cut before they are widened. With `names`,
        also `object_names` beside `object_ids` and `attr_names` beside `attr_ids` (Visual Genome's names)."""
        arrays = self.db.get_arrays(name, fields, self.name2nbb[name], widen=True)
        if names:
            for ids, kind, named in (("object_ids", "objects", "object_names"),
                                     ("attr_ids", "attributes", "attr_names")):
                if ids in arrays:
                    arrays[named] = np.asarray(names_of(arrays[ids], kind), dtype=str)
        return arrays

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, norm_bb) as float32, like `DetectFeatLmdb.__getitem__`."""
        dump = self.get_dump(name, REQUIRED_FIELDS)
        return dump["features"], dump["norm_bb"]

    def __contains__(self, name: str) -> bool:
        return name in self.name2nbb

    def __len__(self) -> int:
        return len(self.name2nbb)


_DB_NAME = re.compile(r"^feat_th(?P<conf>[0-9.]+)_max(?P<max>\d+)_min(?P<min>\d+)$")


def open_feature_dir(root: Path) -> RegionFeatureReader:
    """The reader for the one feat_th*_max*_min* store in `root` (an extract-regions output)."""
    found = [(m, p) for p in sorted(root.glob("feat_th*")) if p.is_dir() and (m := _DB_NAME.match(p.name))]
    if not found:
        raise UserError(f"{root} has no feat_th*_max*_min* LMDB: pass an extract-regions output folder")
    if len(found) > 1:
        names = ", ".join(p.name for _, p in found)
        raise UserError(f"{root} has several feature stores ({names}): keep one per folder")
    match = found[0][0]
    return RegionFeatureReader(root, float(match["conf"]), int(match["max"]), int(match["min"]))


def merge_feature_shards(out: Path, shard_dirs: list[Path], db_args: tuple[float, int, int], *, keep: bool) -> None:
    """One UNITER store for the whole run (OUT/feat_*/ + sidecars) from the committed shards.

    It can be killed and rerun at any point: the merged LMDB is updated in place (rewriting a key gives
    the same value), MERGED_SHARDS_FILE inside it lists the shards whose images it holds once they are
    synced, and only then is a shard's own LMDB removed (unless `keep`; its small sidecars stay, they list
    its images). So every committed shard's images are in its own store, the merged one, or both; a
    committed shard in neither, or holding fewer images than its stats.json counts, is a UserError naming
    the shard to redo, never a store reported complete without them.
    """
    db_name = feature_db_name(*db_args)
    merged_db = out / db_name
    shards = _checked_shards(shard_dirs, db_args, merged_db)
    name2nbb, meta = _joined_sidecars(out, shards)
    with LmdbWriter(merged_db, commit_every=512) as writer:
        for shard in shards:
            if shard.own_store:
                reader = LmdbReader(shard.path / db_name)
                for key, value in reader.items_raw():
                    writer.put_raw(key, value)
                reader.close()
    write_json_atomic(merged_db / MERGED_SHARDS_FILE, {shard.path.name: len(shard.name2nbb) for shard in shards})
    write_json_atomic(out / nbb_file_name(*db_args), name2nbb)
    write_json_atomic(out / meta_file_name(*db_args), meta)
    if not keep:
        for shard in shards:
            shutil.rmtree(shard.path / db_name, ignore_errors=True)
    shutil.rmtree(out / ".merging", ignore_errors=True)  # left by versions that merged into a copy
    logger.info("merged %d images into %s", len(name2nbb), merged_db)


@dataclass
class _ShardImages:
    """What one committed shard adds to the merged store."""

    path: Path
    name2nbb: dict[str, int]
    meta: dict[str, Any]
    own_store: bool  # its LMDB is still there (else the merged store holds its images)


def _checked_shards(shard_dirs: list[Path], db_args: tuple[float, int, int], merged_db: Path) -> list[_ShardImages]:
    """Every committed shard with where its images are, each checked against its stats.json's ok count."""
    db_name = feature_db_name(*db_args)
    held = _read_optional(merged_db / MERGED_SHARDS_FILE) if (merged_db / "data.mdb").is_file() else {}
    merged = LmdbReader(merged_db) if held else None
    shards = []
    try:
        for path in shard_dirs:
            own_store = (path / db_name / "data.mdb").is_file()
            shard = _ShardImages(path, _read_optional(path / nbb_file_name(*db_args)),
                                 _read_optional(path / meta_file_name(*db_args)), own_store)
            if not shard.own_store and path.name not in held:
                raise UserError(f"{path} is committed but its feature store {db_name} is gone: delete {path} "
                                "and rerun the same command to redo that shard")
            reader = LmdbReader(path / db_name) if shard.own_store else merged
            _check_images_present(shard, reader)
            if shard.own_store:
                reader.close()
            shards.append(shard)
    finally:
        if merged is not None:
            merged.close()  # the merged store is written next, and LMDB opens a path once per process
    return shards


def _check_images_present(shard: _ShardImages, reader: LmdbReader) -> None:
    expected = read_json(shard.path / STATS_FILE)["ok"]
    found = sum(1 for name in shard.name2nbb if reader.get_raw(name) is not None)
    if found != expected:
        raise UserError(f"{shard.path}: its feature store holds {found} of the {expected} images its {STATS_FILE} "
                        f"counts as ok: delete {shard.path} and rerun the same command to redo that shard")


def _joined_sidecars(out: Path, shards: list[_ShardImages]) -> tuple[dict[str, int], dict[str, Any]]:
    """The merged nbb and img_meta contents; an image in two shards would make counts lie, so it is refused."""
    name2nbb: dict[str, int] = {}
    meta: dict[str, Any] = {}
    for shard in shards:
        repeated = sorted(set(shard.name2nbb) & set(name2nbb))
        if repeated:
            raise UserError(f"{out}: image {repeated[0]!r} is in {shard.path} and an earlier shard: "
                            "rerun with --overwrite to rebuild the store")
        name2nbb.update(shard.name2nbb)
        meta.update(shard.meta)
    return name2nbb, meta


def _read_optional(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}
