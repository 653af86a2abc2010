from __future__ import annotations

import json

from tests.conftest import read_jsonl, write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.outputs import iter_output_jsonl


def test_pairs_are_cleaned_deduplicated_and_checked_against_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"jpg")
    captions = write_jsonl(tmp_path / "caps.jsonl", [
        {"id": "1", "image": "a.jpg", "caption": "  A dog\u200b on   grass. "},
        {"id": "2", "image": "a.jpg", "caption": "   "},
        {"id": "1", "image": "a.jpg", "caption": "duplicate id"},
        {"id": "3", "image": "missing.jpg", "caption": "no image file"},
        {"id": "4", "image": "a.jpg", "caption": "word " * 400},
        {"id": "5", "image": "a.jpg", "caption": ["not", "text"]},
        "{broken",
    ])
    out = tmp_path / "pairs"
    assert main(["import-pairs", "--captions", str(captions), "--image-root", str(tmp_path / "img"),
                 "--out", str(out), "--max-caption-chars", "100", "--shard-size", "3"]) == 0
    rows = list(iter_output_jsonl(out, "pairs.jsonl"))
    assert [r["id"] for r in rows] == ["1", "4"]
    assert rows[0] == {"id": "1", "image": "a.jpg", "caption": "A dog on grass.", "source": "caps.jsonl"}
    assert len(rows[1]["caption"]) <= 100 and rows[1]["caption"].endswith("word")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 7 and summary["ok"] == 2 and summary["failed"] == 4
    assert summary["failure_reasons"] == {"empty_caption": 1, "missing_image": 1, "malformed_caption": 1,
                                          "malformed_json": 1}
    assert summary["skip_reasons"] == {"duplicate_id": 1}
    assert summary["counters"] == {"captions_truncated": 1}


def test_split_filter_skips_other_splits(tmp_path):
    karpathy = tmp_path / "dataset_flickr30k.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "a", "sentid": 1}]},
        {"filename": "2.jpg", "split": "test", "sentences": [{"raw": "b", "sentid": 2}]},
    ]}))
    out = tmp_path / "pairs"
    assert main(["import-pairs", "--captions", str(karpathy), "--out", str(out), "splits=train"]) == 0
    assert [r["id"] for r in read_jsonl(out / "shards" / "00000" / "pairs.jsonl")] == ["1"]
    assert json.loads((out / "summary.json").read_text())["skip_reasons"] == {"other_split": 1}
