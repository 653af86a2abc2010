"""`unimo-pipe export-features FEATDIR --format h5 --output FILE`: a UNITER store as one HDF5 file.

Arrays are written exactly as stored (float16 stays float16), one group per image, with the image's
width and height as attributes; `import-features` reads the file back to the same values.
"""

from __future__ import annotations

from pathlib import Path

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.feature_store import open_feature_dir
from unimo_pipe.pipeline.hdf5_store import Hdf5Writer

EXPORT_FORMATS = ("h5",)


def export_features(feature_dir: Path, output: Path, fmt: str = "h5") -> int:
    """Write every image of `feature_dir` to `output`; returns the number of images."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if not feature_dir.is_dir():
        raise UserError(f"feature folder not found: {feature_dir}: pass an extract-regions or import-features --out")
    reader = open_feature_dir(feature_dir)
    count = 0
    with Hdf5Writer(output) as writer:
        for name in sorted(reader.name2nbb):
            writer.add(name, reader.db[name], attrs=reader.meta.get(name))
            count += 1
    return count
