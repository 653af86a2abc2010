"""`extract-regions`: bottom-up-attention region features into UNITER's LMDB layout.

Keys are image paths relative to --images (posix), so "a/x.jpg" and "b/x.jpg" stay distinct; with
--image-list, paths as listed (absolute ones relative to their common folder). Per shard, a store in
UNITER's layout; once every shard is committed they are merged into
OUT/feat_th{conf}_max{max}_min{min}/ + OUT/nbb_*.json + OUT/img_meta_*.json (width, height per image).

Per box: features (N, D) f16, norm_bb (N, 6) f16, conf (N,) f16, soft_labels (N, 1601) f16 with background
in column 0 (UNITER's order; the checkpoint has it last), plus boxes (N, 4) f32 pixel xyxy, object_ids,
attr_ids (int32) and attr_conf (f16).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unimo_pipe.pipeline.config import option
from unimo_pipe.pipeline.errors import RecordError, UserError
from unimo_pipe.pipeline.images import DEFAULT_MAX_PIXELS, list_images
from unimo_pipe.pipeline.stage import CommonOptions, Record, RunContext, ShardContext, Stage

DETECTORS = ("butd-r101", "tiny")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class ExtractRegionsOptions(CommonOptions):
    images: Path | None = option(None, help="folder of images (searched recursively)", must_exist=True,
                                 metavar="DIR")
    image_list: Path | None = option(None, help="file with one image path per line (relative to the file)",
                                     must_exist=True, metavar="FILE")
    detector: str = option("butd-r101", help="detector architecture", choices=DETECTORS)
    weights: Path | None = option(None, help="checkpoint: BUTD .pkl (detectron2 format), .pth or .safetensors",
                                  must_exist=True, metavar="FILE")
    random_weights: bool = option(False, help="run without weights (benchmarks and smoke tests only)")
    seed: int = option(0, help="seed of random weights")
    conf_threshold: float = option(0.2, help="keep boxes whose best class score is at least this", minimum=0.0,
                                   maximum=1.0)
    min_boxes: int = option(10, help="keep at least this many boxes per image", minimum=1)
    max_boxes: int = option(100, help="keep at most this many boxes per image", minimum=1)
    class_nms: float = option(0.3, help="per-class NMS IoU over the proposals", minimum=0.0, maximum=1.0)
    pre_nms_topk: int = option(6000, help="RPN proposals before NMS", minimum=1)
    post_nms_topk: int = option(300, help="RPN proposals after NMS", minimum=1)
    min_size: int = option(600, help="resize the shorter side to this", minimum=32)
    max_size: int = option(1000, help="but keep the longer side at most this", minimum=32)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, help="larger images are refused as decompression bombs",
                             minimum=1)
    precision: str = option("auto", help="auto = bf16 on GPU, fp32 on CPU", choices=PRECISIONS)
    device: str = option("auto", help="where to run", choices=("auto", "cpu", "cuda"), affects_output=False)
    batch_size: int = option(0, help="images per forward pass; 0 = auto (8 on GPU, 1 on CPU, where batching "
                             "only adds cache misses); results do not depend on it", minimum=0, affects_output=False)
    workers: int = option(2, help="image-decoding worker processes (0: decode in the main process)", minimum=0,
                          affects_output=False)
    keep_shard_stores: bool = option(False, help="keep per-shard stores after merging", affects_output=False)
    shard_size: int = option(1000, help="images per shard", minimum=1)


class ExtractRegions(Stage):
    name = "extract-regions"
    summary = "bottom-up-attention Faster R-CNN region features into UNITER's LMDB layout"
    options_class = ExtractRegionsOptions


    def check(self, options: ExtractRegionsOptions) -> list[str]:
        problems = []
        if (options.images is None) == (options.image_list is None):
            problems.append("pass exactly one of --images DIR or --image-list FILE")
        if options.detector == "butd-r101" and options.weights is None and not options.random_weights:
            problems.append("--detector butd-r101 needs --weights FILE (or --random-weights for benchmarks only)")
        if options.min_boxes > options.max_boxes:
            problems.append(f"min_boxes ({options.min_boxes}) must not exceed max_boxes ({options.max_boxes})")
        return problems

    def iter_records(self, options: ExtractRegionsOptions) -> Iterator[Record]:
        for key, path in _image_entries(options):
            yield Record(key, str(path))

    def models_used(self, options: ExtractRegionsOptions) -> list[str]:
        if options.weights is not None:
            return [f"extract-regions: detector {options.detector} with weights {options.weights}"]
        return [f"extract-regions: detector {options.detector} with RANDOM weights (seed {options.seed}): "
                "boxes and features are not meaningful, only the pipeline is exercised"]

    def open(self, options: ExtractRegionsOptions, run: RunContext) -> None:
        from unimo_pipe.models.extractor import RegionExtractor

        self.extractor = RegionExtractor.from_options(options)

    def process_shard(self, records: list[Record], ctx: ShardContext) -> None:
        options: ExtractRegionsOptions = ctx.options
        from unimo_pipe.pipeline.feature_store import RegionFeatureWriter  # imports lmdb: not at CLI start-up

        db_args = (options.conf_threshold, options.max_boxes, options.min_boxes)
        with RegionFeatureWriter(ctx.work_dir, conf_th=db_args[0], max_bb=db_args[1], min_bb=db_args[2]) as writer:
            for key, outcome in self.extractor.run([(r.key, Path(r.value)) for r in records]):
                with ctx.record(key):
                    if isinstance(outcome, RecordError):
                        raise outcome
                    arrays, meta = outcome
                    if len(arrays["features"]) == 0:  # no proposals survived: written empty, but reported
                        ctx.stats.count("images_without_boxes")
                    writer.add(key, arrays, meta=meta)

    def finalize(self, options: ExtractRegionsOptions, shard_dirs: list[Path]) -> None:
        from unimo_pipe.pipeline.feature_store import merge_feature_shards

        merge_feature_shards(options.out, shard_dirs, (options.conf_threshold, options.max_boxes, options.min_boxes),
                             keep=options.keep_shard_stores)


def _read_image_list(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save the image list as "
                        "UTF-8, one image path per line") from None


def _image_entries(options: ExtractRegionsOptions) -> list[tuple[str, Path]]:
    if options.images is not None:
        root = options.images
        return [(p.relative_to(root).as_posix(), p) for p in list_images(root)]
    lines = [line.strip() for line in _read_image_list(options.image_list).splitlines()]
    paths = [options.image_list.parent / line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise UserError(f"{options.image_list} lists no images")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    seen, entries = set(), []
    for path in paths:
        key = path.relative_to(root).as_posix()
        if key not in seen:
            seen.add(key)
            entries.append((key, path))
    return entries
