"""`unimo-pipe report` on the demo's outputs with --samples 50: seconds and bytes, against the naive page that
inlines every image file as it is on disk instead of a thumbnail (the obvious way to make a page self-contained).

Runs the demo first unless --demo-out names a finished one. Prints one JSON line; asserts the issue's limits
(under 10 s, under 5 MB) and that thumbnails make a smaller page than the files themselves.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import mimetypes
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed_call  # noqa: E402

from unimo_pipe.workflows.report import write_report  # noqa: E402


def whole_file_uri(path: Path, *, max_side: int) -> str | None:
    """The naive way: the image file itself, base64, whatever its size."""
    if not path.is_file():
        return None
    kind = mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@contextlib.contextmanager
def naive_images():
    from unimo_pipe.workflows.report import regions, retrieval

    saved = regions.thumbnail_uri, retrieval.thumbnail_uri
    regions.thumbnail_uri = retrieval.thumbnail_uri = whole_file_uri
    try:
        yield
    finally:
        regions.thumbnail_uri, retrieval.thumbnail_uri = saved


def run(demo_out: Path | None, samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if demo_out is None:
            from unimo_pipe.workflows.demo import run_demo

            demo_out = Path(tmp) / "demo"
            with contextlib.redirect_stdout(io.StringIO()):
                run_demo(demo_out)
        write_report([demo_out], Path(tmp) / "warm.html", samples=samples)  # imports and matplotlib's font cache
        ours_s, ours = timed_call(write_report, [demo_out], Path(tmp) / "ours.html", samples=samples)
        with naive_images():
            naive_s, naive = timed_call(write_report, [demo_out], Path(tmp) / "naive.html", samples=samples)
    report("report", samples=samples, sections=ours.sections, seconds=round(ours_s, 2),
           megabytes=round(ours.bytes / 1e6, 2), naive_seconds=round(naive_s, 2),
           naive_megabytes=round(naive.bytes / 1e6, 2), size_ratio=round(naive.bytes / ours.bytes, 2),
           time_ratio=round(naive_s / ours_s, 2))
    assert ours_s < 10, f"the demo's report took {ours_s:.1f} s (limit 10 s)"
    assert ours.bytes < 5_000_000, f"the demo's report is {ours.bytes / 1e6:.1f} MB (limit 5 MB)"
    assert ours.bytes < naive.bytes, "thumbnails should make a smaller page than the image files"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo-out", type=Path, default=None, help="a finished `unimo-pipe demo --out` folder")
    parser.add_argument("--samples", type=int, default=50)
    arguments = parser.parse_args()
    run(arguments.demo_out, arguments.samples)
