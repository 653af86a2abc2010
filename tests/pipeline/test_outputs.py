from __future__ import annotations

import pytest

from tests.conftest import read_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.lmdb_store import LmdbReader, LmdbWriter
from unimo_pipe.pipeline.outputs import iter_output_jsonl, merge_outputs
from unimo_pipe.pipeline.runner import shard_dir


def run_corpus(tmp_path, *extra):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"this is sentence {i}\n" for i in range(10)))
    out = tmp_path / "corpus"
    assert main(["import-corpus", "--text-corpus", str(corpus), "--out", str(out), "shard_size=3", *extra]) == 0
    return out


def test_merge_concatenates_jsonl_and_lmdb_in_shard_order(tmp_path):
    out = run_corpus(tmp_path)
    for index in range(4):  # give each shard an LMDB too, as feature stages do
        with LmdbWriter(shard_dir(out, index) / "feats") as writer:
            writer.put(f"k{index}", index)
    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0
    texts = [r["text"] for r in read_jsonl(tmp_path / "merged" / "sentences.jsonl")]
    assert texts == [f"this is sentence {i}" for i in range(10)]
    reader = LmdbReader(tmp_path / "merged" / "feats")
    assert sorted(reader.keys()) == ["k0", "k1", "k2", "k3"] and reader["k2"] == 2


def test_unfinished_outputs_are_refused(tmp_path):
    out = run_corpus(tmp_path, "--shard", "0/2")
    with pytest.raises(UserError, match="incomplete \\(2 shards committed\\): rerun"):
        list(iter_output_jsonl(out, "sentences.jsonl"))
    with pytest.raises(UserError, match="does not exist"):
        merge_outputs(tmp_path / "nothing", tmp_path / "m")


def test_merge_refuses_a_non_empty_destination(tmp_path):
    out = run_corpus(tmp_path)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    assert main(["merge", str(out), str(tmp_path / "dest")]) == 2


def test_rows_of_a_finished_output_come_with_their_place_and_problem(tmp_path):
    from unimo_pipe.pipeline.outputs import iter_output_rows

    out = run_corpus(tmp_path)
    path = shard_dir(out, 1) / "sentences.jsonl"
    path.write_text(path.read_text() + '{"text": "no id"}\n{broken\n')
    rows = list(iter_output_rows(out, "sentences.jsonl", required=("id", "text")))
    assert len(rows) == 12
    assert [row for row in rows if row[2]] == [(f"{path}:4", None, "malformed_row"),
                                               (f"{path}:5", None, "malformed_json")]
    path.unlink()  # a committed shard that lost its file is damage, never zero rows
    with pytest.raises(UserError, match="sentences.jsonl is missing from a finished stage output"):
        list(iter_output_rows(out, "sentences.jsonl"))
