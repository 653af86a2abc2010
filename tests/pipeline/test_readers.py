from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.readers import detect_caption_format, iter_captions, iter_corpus


def good(records):
    return [r.value for r in records if r.error is None]


def bad(records):
    return [(r.key, r.error) for r in records if r.error is not None]


def test_coco_captions_with_malformed_annotations(tmp_path):
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A dog."}, {"id": 11, "image_id": 9, "caption": "x"},
                        {"id": 12, "image_id": 2}, {"id": 13, "image_id": 2, "caption": "A cat."}],
    }))
    records = list(iter_captions(path))
    assert good(records) == [{"id": "10", "image": "a.jpg", "caption": "A dog."},
                             {"id": "13", "image": "b.jpg", "caption": "A cat."}]
    assert bad(records) == [("captions_train2014.json:annotations[1]", "unknown_image_id"),
                            ("captions_train2014.json:annotations[2]", "malformed_row")]


def test_karpathy_split_json(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "v.jpg", "split": "test",
         "sentences": [{"raw": "One.", "sentid": 0}, {"sentid": 1}]},
        {"filename": "f.jpg", "split": "train", "sentences": [{"raw": "Two.", "sentid": 2}]},
    ]}))
    assert detect_caption_format(path) == "karpathy"
    records = list(iter_captions(path))
    assert good(records) == [{"id": "0", "image": "val2014/v.jpg", "caption": "One.", "split": "test"},
                             {"id": "2", "image": "f.jpg", "caption": "Two.", "split": "train"}]
    assert bad(records) == [("dataset_coco.json:images[0].sentences[1]", "malformed_row")]


def test_conceptual_captions_tsv_without_header(tmp_path):
    path = tmp_path / "Train_GCC.tsv"
    path.write_bytes(b"a dog runs\thttp://x/1.jpg\nonly one column\n\xff\xfe\tbad\na cat\thttp://x/2.jpg\n")
    records = list(iter_captions(path))
    assert good(records) == [{"id": "Train_GCC-1", "image": "http://x/1.jpg", "caption": "a dog runs"},
                             {"id": "Train_GCC-4", "image": "http://x/2.jpg", "caption": "a cat"}]
    assert bad(records) == [("Train_GCC.tsv:2", "malformed_row"), ("Train_GCC.tsv:3", "invalid_utf8")]


def test_tsv_with_header_columns(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("url\tkey\tcaption\nhttp://x/1.jpg\tk1\ta dog\n")
    assert good(iter_captions(path)) == [{"id": "k1", "image": "http://x/1.jpg", "caption": "a dog"}]


def test_jsonl_captions_with_every_kind_of_bad_line(tmp_path):
    path = tmp_path / "caps.jsonl"
    write_jsonl(path, [{"id": 1, "image": "a.jpg", "caption": "ok"}, "{not json", '"a string"',
                       {"image": "b.jpg", "caption": "no id"}, {"id": 2, "image": "b.jpg"}, ""])
    with path.open("ab") as f:
        f.write(b'{"id": 3, "caption": "\xff"}\n')
    records = list(iter_captions(path))
    assert good(records) == [{"id": "1", "image": "a.jpg", "caption": "ok"}]
    assert bad(records) == [("caps.jsonl:2", "malformed_json"), ("caps.jsonl:3", "malformed_row"),
                            ("caps.jsonl:4", "missing_id"), ("caps.jsonl:5", "missing_caption"),
                            ("caps.jsonl:7", "invalid_utf8")]


def test_plain_lines(tmp_path):
    path = tmp_path / "caps.txt"
    path.write_text("first caption\n\nsecond caption\n")
    assert [v["caption"] for v in good(iter_captions(path))] == ["first caption", "second caption"]
    assert [v["id"] for v in good(iter_captions(path))] == ["1", "3"]


def test_unrecognised_inputs_are_user_errors(tmp_path):
    (tmp_path / "x.json").write_text('{"foo": 1}')
    with pytest.raises(UserError, match="neither COCO"):
        list(iter_captions(tmp_path / "x.json"))
    (tmp_path / "y.json").write_text('{"annotations": [')
    with pytest.raises(UserError, match="y.json is not valid JSON"):
        list(iter_captions(tmp_path / "y.json"))
    (tmp_path / "z.xml").write_text("<a/>")
    with pytest.raises(UserError, match="pass --format"):
        list(iter_captions(tmp_path / "z.xml"))


def test_corpus_sentences_and_documents(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_bytes(b"Dr. Smith went home. He slept.\n\n\xff\nA second doc! Is it? Yes.\n")
    assert [(r.key, r.value) for r in iter_corpus(path, "document") if r.error is None] == [
        ("wiki:1.0", "Dr. Smith went home."), ("wiki:1.1", "He slept."),
        ("wiki:4.0", "A second doc!"), ("wiki:4.1", "Is it?"), ("wiki:4.2", "Yes.")]
    assert [(r.key, r.error) for r in iter_corpus(path) if r.error] == [("wiki:3", "invalid_utf8")]
    assert [r.value for r in iter_corpus(path) if r.error is None][0] == "Dr. Smith went home. He slept."
