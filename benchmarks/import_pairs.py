"""import-pairs throughput: the shard runner vs the naive resumable script (append one row per record).

The naive way opens the output, appends one cleaned row and closes it per record, which is how
"resume by appending" scripts stay crash-safe-ish. Ours writes one file per shard and commits it
atomically. Prints one JSON line with the speedup; asserts only that both wrote every record (the speed
depends on the disk under the temporary folder and its other load: reported, never asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report, timed  # noqa: E402

from unimo_pipe.pipeline.cli import main as cli_main  # noqa: E402
from unimo_pipe.pipeline.text import normalize_text  # noqa: E402


def make_captions(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "image": f"{i % 1000}.jpg",
                                "caption": f"  A  person number {i} rides a bicycle next to a red bus. "}) + "\n")


def naive(captions: Path, out: Path) -> None:
    for line in captions.open():
        row = json.loads(line)
        row["caption"] = normalize_text(row["caption"])
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def ours(captions: Path, out: Path) -> None:
    code = cli_main(["import-pairs", "--captions", str(captions), "--out", str(out), "--shard-size", "50000"])
    assert code == 0


def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        captions = Path(tmp) / "caps.jsonl"
        make_captions(captions, n)
        naive_s = timed(lambda: naive(captions, Path(tmp) / "naive.jsonl"))
        ours_s = timed(lambda: ours(captions, Path(tmp) / "ours"))
        written = (sum(1 for _ in (Path(tmp) / "naive.jsonl").open()),
                   sum(1 for path in (Path(tmp) / "ours").glob("shards/*/*.jsonl") for _ in path.open()))
    naive_rate, ours_rate = n / naive_s, n / ours_s
    report("import_pairs", records=n, naive_records_per_s=round(naive_rate), ours_records_per_s=round(ours_rate),
           speedup=round(ours_rate / naive_rate, 2))
    assert written == (n, n), f"records written (naive, ours): {written}, expected {n} each"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    run(parser.parse_args().records)
