from __future__ import annotations

import json

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.outputs import iter_output_jsonl
from unimo_pipe.workflows import demo_data_dir


def test_bundled_data_is_complete():
    data = demo_data_dir()
    images = sorted(p.name for p in (data / "images").iterdir())
    assert len(images) == 12
    captions = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 60 and {c["image"] for c in captions} == set(images)
    assert (data / "CREDITS.md").is_file()


def test_demo_runs_end_to_end_and_resumes(demo_output, capsys):
    out, printed = demo_output  # the first run, shared with the report tests
    assert "import-pairs" in printed and "Models used by this demo" in printed
    pairs = list(iter_output_jsonl(out / "pairs", "pairs.jsonl"))
    assert len(pairs) == 60 and all(p["caption"] for p in pairs)
    sentences = list(iter_output_jsonl(out / "corpus", "sentences.jsonl"))
    assert len(sentences) > 200
    assert json.loads((out / "corpus" / "summary.json").read_text())["skip_reasons"]["duplicate"] >= 2
    assert "finetune-classifier: 20 steps" in printed
    matches = [json.loads(line) for line in (out / "classify" / "matches.jsonl").read_text().splitlines()]
    own_image = {p["caption"]: p["image"] for p in pairs}
    assert len(matches) == 120 and all((m["image"] == own_image[m["text"]]) == (m["label"] == "match")
                                       for m in matches)
    assert json.loads((out / "classify" / "classification.json").read_text())["examples"] == 120
    assert "finetune-caption: 20 steps" in printed and "generate + evaluate-caption: 12 images" in printed
    assert len(list(iter_output_jsonl(out / "captions", "generations.jsonl"))) == 12
    assert json.loads((out / "captions" / "scores.json").read_text())["tokenization"].startswith("python")
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0/3/3" in printed and "finetune-classifier: already finished" in printed
    assert "finetune-caption: already finished" in printed
