"""`import-features`: region features from BUTD/LXMERT TSV, npz folders or HDF5 into UNITER's layout.

The output is the same as extract-regions' (per-shard stores merged into OUT/feat_th*/ + sidecars),
so every later stage reads imported and extracted features alike. A bad row is counted, not fatal.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.feature_formats import parse_tsv_row, read_npz
from unimo_pipe.pipeline.formats import printable_key, undecodable_name_error
from unimo_pipe.pipeline.hdf5_store import iter_hdf5_items, read_hdf5_item
from unimo_pipe.pipeline.stage import CommonOptions, Record, ShardContext, Stage

FORMATS = ("auto", "tsv", "npz", "h5")


@dataclass
class ImportFeaturesOptions(CommonOptions):
    source: list[Path] = option([], help="BUTD/LXMERT .tsv files, folders of .npz files, or .h5 files",
                                required=True, must_exist=True, metavar="PATH")
    format: str = option("auto", help="source format (auto: .tsv, folder = npz, .h5/.hdf5)", choices=FORMATS)
    conf_threshold: float = option(0.2, help="names the store like UNITER (feat_th{this}_max..._min...)")
    max_boxes: int = option(100, help="names the store like UNITER", minimum=1)
    min_boxes: int = option(10, help="names the store like UNITER", minimum=1)
    keep_shard_stores: bool = option(False, help="keep per-shard stores after merging", affects_output=False)
    shard_size: int = option(5000, help="images per shard", minimum=1)


def _format_of(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    if path.is_dir():
        return "npz"
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return "tsv"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise UserError(f"{path}: cannot tell the feature format: pass --format tsv, npz or h5")


class ImportFeatures(Stage):
    name = "import-features"
    summary = "import region features (BUTD/LXMERT TSV, npz folders, HDF5) into UNITER's LMDB layout"
    options_class = ImportFeaturesOptions

    def iter_records(self, options: ImportFeaturesOptions) -> Iterator[Record]:
        """Every image of every source; an image id seen before (in any source) is marked a duplicate here,
        in global order, so workers agree on which one is kept: the first, even if that row is bad."""
        seen: set[str] = set()
        for record in self._source_records(options):
            image_id = record.value.image_id if record.error is None else None
            if image_id is not None and image_id in seen:
                record = Record(record.key, record.value._replace(duplicate=True))
            elif image_id is not None:
                seen.add(image_id)
            yield record

    def _source_records(self, options: ImportFeaturesOptions) -> Iterator[Record]:
        for source in options.source:
            fmt = _format_of(source, options.format)
            if fmt == "tsv":
                yield from _tsv_offsets(source)
            elif fmt == "npz":
                for path in sorted(source.rglob("*.npz"), key=lambda p: p.relative_to(source).as_posix()):
                    yield _npz_record(path.relative_to(source).as_posix(), path)
            else:
                for name in _hdf5_names(source):
                    yield Record(name, _Item("h5", str(source), name, name))

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ImportFeaturesOptions = ctx.options
        from unimo_pipe.pipeline.feature_store import RegionFeatureWriter  # imports lmdb: not at CLI start-up

        db_args = (options.conf_threshold, options.max_boxes, options.min_boxes)
        with RegionFeatureWriter(ctx.work_dir, conf_th=db_args[0], max_bb=db_args[1], min_bb=db_args[2]) as writer:
            for record in records:
                if record.value.duplicate:
                    ctx.stats.skip("duplicate_image")
                    continue
                with ctx.record(record.key):
                    key, arrays, meta = _read(record)
                    try:
                        writer.add(key, arrays, meta=meta or None)
                    except ValueError as exc:
                        raise RecordError("malformed_arrays", str(exc)) from None

    def finalize(self, options: ImportFeaturesOptions, shard_dirs: list[Path]) -> None:
        from unimo_pipe.pipeline.feature_store import merge_feature_shards

        merge_feature_shards(options.out, shard_dirs, (options.conf_threshold, options.max_boxes, options.min_boxes),
                             keep=options.keep_shard_stores)


class _Item(NamedTuple):
    """Where one image's row is; `image_id` is the key it is stored under (None if unreadable here)."""

    kind: str
    path: str
    where: str | int | None  # TSV byte offset, HDF5 group name
    image_id: str | None
    duplicate: bool = False


def _npz_record(key: str, path: Path) -> Record:
    error = undecodable_name_error(key)
    if error is not None:
        return Record(printable_key(key), error=error.reason, detail=error.detail)
    return Record(key, _Item("npz", str(path), None, key))


def _tsv_offsets(path: Path) -> Iterator[Record]:
    """One record per line: its byte offset and first column (the image id); rows are parsed only in their shard."""
    offset = 0
    with path.open("rb") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield Record(f"{path.name}:{line_number}", _Item("tsv", str(path), offset, _first_cell(line)))
            offset += len(line)


def _first_cell(line: bytes) -> str | None:
    try:
        text = line.split(b"\t", 1)[0].decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None  # the shard counts the row as invalid_utf8
    return next(csv.reader([text], delimiter="\t"), [""])[0]


def _read(record: Record):
    kind, path, where, _, _ = record.value
    if kind == "tsv":
        with open(path, "rb") as f:
            f.seek(where)
            line = f.readline()
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise RecordError("invalid_utf8") from None
        csv.field_size_limit(sys.maxsize)
        return parse_tsv_row(next(csv.reader([text], delimiter="\t")))
    if kind == "npz":
        arrays, meta = read_npz(Path(path))
        return record.key, arrays, meta
    arrays, attrs = read_hdf5_item(Path(path), where)
    return where, arrays, {k: int(v) for k, v in attrs.items() if k in ("width", "height")}


def _hdf5_names(path: Path) -> list[str]:
    return [name for name, _, _ in iter_hdf5_items(path, arrays=False)]
