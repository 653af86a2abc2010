from __future__ import annotations

import json

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.outputs import iter_output_jsonl


def test_corpus_documents_are_split_deduplicated_and_filtered(tmp_path):
    corpus = tmp_path / "books.txt"
    corpus.write_bytes(b"The dog ran home. It was late. The dog ran home.\nToo short.\n\xff\nA cat sat on a mat.\n")
    out = tmp_path / "corpus"
    assert main(["import-corpus", "--text-corpus", str(corpus), "--unit", "document", "--out", str(out),
                 "--shard-size", "2"]) == 0
    rows = list(iter_output_jsonl(out, "sentences.jsonl"))
    assert rows == [{"id": "books:1.0", "text": "The dog ran home."}, {"id": "books:1.1", "text": "It was late."},
                    {"id": "books:4.0", "text": "A cat sat on a mat."}]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 6
    assert summary["skip_reasons"] == {"duplicate": 1, "too_short": 1}
    assert summary["failure_reasons"] == {"invalid_utf8": 1}


def test_duplicates_are_the_same_whichever_worker_runs_a_shard(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"sentence number {i % 7} here\n" for i in range(30)))
    single, split = tmp_path / "single", tmp_path / "split"
    assert main(["import-corpus", "--text-corpus", str(corpus), "--out", str(single), "shard_size=4"]) == 0
    for worker in ("1/3", "0/3", "2/3"):
        assert main(["import-corpus", "--text-corpus", str(corpus), "--out", str(split), "shard_size=4",
                     "--shard", worker]) == 0
    assert list(iter_output_jsonl(single, "sentences.jsonl")) == list(iter_output_jsonl(split, "sentences.jsonl"))
    assert len(list(iter_output_jsonl(split, "sentences.jsonl"))) == 7
