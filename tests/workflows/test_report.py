"""`unimo-pipe report`: what each section shows of the demo's outputs, and bad input rendered, never raised."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import open_feature_dir
from unimo_pipe.pipeline.formats import SUMMARY_FILE
from unimo_pipe.pipeline.visual_genome import vocabulary
from unimo_pipe.workflows.report import write_report


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="[^"]+" class="report-section" data-kind="([a-z-]+)"', page)


def not_shown(page: str) -> str:
    """The text of the report's 'What this report could not show' list."""
    return page.split('data-kind="not-shown"', 1)[1].split("</section>", 1)[0]


def section_html(page: str, kind: str, nth: int = 0) -> str:
    parts = page.split(f'data-kind="{kind}"')
    assert len(parts) > nth + 1, f"no {kind} section"
    return parts[nth + 1].split("</section>", 1)[0]


def test_demo_prints_its_report_and_it_holds_every_section(demo_output):
    out, printed = demo_output
    last_line = printed.strip().splitlines()[-1]
    assert last_line == f"Report of what the demo made: {out / 'report.html'} (open it in a browser)"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert sections(page).count("stage") == 7 and sections(page).count("training") == 3  # + generate, finetune-caption
    assert {"regions", "augment", "retrieval", "shards"} <= set(sections(page))
    assert "Nothing: every input was read in full." in not_shown(page)
    assert not re.search(r"""(src|href)=["']?(https?:|//)|<link|<script|@import|url\((?!#)""", page)  # nothing fetched


def test_stage_accounting_shows_counts_reasons_throughput_and_config_hash(demo_output):
    out, _ = demo_output
    page = (out / "report.html").read_text(encoding="utf-8")
    corpus = section_html(page, "stage", 1)
    summary = json.loads((out / "corpus" / SUMMARY_FILE).read_text())
    assert summary["config_hash"] in corpus and f"{summary['records_per_s']:,.1f}" in corpus
    assert "<td>duplicate</td><td>2</td>" in corpus


def test_regions_are_named_with_visual_genome_classes(demo_output):
    out, _ = demo_output
    page = (out / "report.html").read_text(encoding="utf-8")
    regions = section_html(page, "regions")
    store = open_feature_dir(out / "features")
    dump = store.get_dump("cat.jpg", names=True)
    best = int(np.argmax(dump["conf"]))
    label = f"{vocabulary('attributes')[dump['attr_ids'][best]]} {vocabulary('objects')[dump['object_ids'][best]]} " \
            f"{dump['conf'][best]:.2f}"
    figure = regions.split('data-image="cat.jpg"', 1)[1].split("</figure>", 1)[0]
    assert f">{label}</text>" in figure
    assert figure.count('class="box"') == len(dump["boxes"]) == store.name2nbb["cat.jpg"]
    assert "boxes per image" in regions and "box confidence" in regions


def test_augment_highlights_the_changed_words_and_counts_kinds(demo_output):
    out, _ = demo_output
    page = (out / "report.html").read_text(encoding="utf-8")
    augment = section_html(page, "augment")
    rows = [json.loads(line) for line in (out / "augment" / "shards" / "00000" / "augment.jsonl").open()]
    kinds = {}
    for row in rows:
        for negative in row["negatives"]:
            kinds[negative["kind"]] = kinds.get(negative["kind"], 0) + 1
    for kind, count in kinds.items():
        assert f"<td>{kind}</td><td>{count:,}</td>" in augment
    shown = re.search(r'<div class="sample" data-id="([^"]+)">', augment).group(1)
    row = next(r for r in rows if r["id"] == shown)
    first = row["negatives"][0]
    changed = [w for w in first["text"].split() if w not in row["caption"].split()]
    assert changed and all(f"<mark>{w}" in augment or f" {w}</mark>" in augment for w in changed[:1])
    assert "captions_with_positive_shortfall" in augment


def test_retrieval_shows_neighbours_scores_and_index(demo_output):
    out, _ = demo_output
    page = (out / "report.html").read_text(encoding="utf-8")
    retrieval = section_html(page, "retrieval")
    view = [json.loads(line) for line in (out / "retrieval" / "shards" / "00000" / "retrieval.jsonl").open()]
    shown = re.search(r'<div class="sample" data-id="([^"]+)">', retrieval).group(1)
    row = next(r for r in view if r["id"] == shown)
    assert f"<td>{row['texts'][0]['text']}</td><td>{row['texts'][0]['score']:.3f}</td>" in retrieval
    assert f'alt="{row["images"][0]["id"]}"' in retrieval  # a thumbnail: the demo's images are at hand
    assert "image scores" in retrieval and "exact (recall 1)" in retrieval


def test_shards_section_checks_the_manifest(demo_output, tmp_path):
    out, _ = demo_output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert section_html(page, "shards").count('class="good">match') == 3
    shards = tmp_path / "shards"
    shutil.copytree(out / "shards", shards)
    with (shards / "shards" / "00000" / "texts.jsonl").open("a") as f:
        f.write('{"id": "added later", "text": "x"}\n')
    damaged = write_report([shards], tmp_path / "report.html").path.read_text(encoding="utf-8")
    assert 'class="bad">differs' in section_html(damaged, "shards")
    assert "manifest check(s) failed" in not_shown(damaged)


def test_inspect_names_the_detected_objects(demo_output, capsys):
    out, _ = demo_output
    assert main(["inspect", str(out / "shards")]) == 0
    printed = capsys.readouterr().out
    dump = open_feature_dir(out / "features").get_dump("astronaut.jpg", names=True)
    best = int(np.argmax(dump["conf"]))
    assert f"objects: {dump['attr_names'][best]} {dump['object_names'][best]}" in printed


def test_report_of_fifty_samples_stays_small(demo_output, tmp_path):
    out, _ = demo_output
    result = write_report([out], tmp_path / "report.html", samples=50)
    assert result.bytes == (tmp_path / "report.html").stat().st_size < 5_000_000
    page = result.path.read_text(encoding="utf-8")
    assert section_html(page, "regions").count('class="region-figure"') == 12  # every demo image


# -- bad input: the report still renders, and says what it could not show --

def test_a_folder_that_is_no_output_is_named_not_fatal(demo_output, tmp_path, capsys):
    out, _ = demo_output
    stray = tmp_path / "holiday-photos"
    stray.mkdir()
    (stray / "notes.txt").write_text("hello")
    code = main(["report", str(stray), str(out / "pretrain"), str(tmp_path / "missing"), "--out",
                 str(tmp_path / "r.html")])
    assert code == 0
    assert "thing(s) it could not show" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    shown = not_shown(page)
    assert f"{stray} is no stage output" in shown and f"{tmp_path / 'missing'} does not exist" in shown
    assert sections(page) == ["not-shown", "training"]


def test_a_half_written_stage_is_reported_as_such(demo_output, tmp_path):
    out, _ = demo_output
    pairs = tmp_path / "pairs"
    shutil.copytree(out / "pairs", pairs)
    (pairs / SUMMARY_FILE).unlink()
    (pairs / "shards" / "00002").rename(pairs / "shards" / "00002.partial")
    page = write_report([pairs], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert "half-written: 2 shard(s) committed, 1 partial (00002.partial)" in not_shown(page)
    assert "<td>50</td><td>50</td>" in section_html(page, "stage")  # the two committed shards of 25


def test_a_half_written_region_stage_shows_its_shard_stores(demo_output, tmp_path):
    """Before finalize merges them, the region features are in the committed shards' own stores."""
    out, _ = demo_output
    features = tmp_path / "features"
    shutil.copytree(out / "features", features)
    (features / SUMMARY_FILE).unlink()
    merged = next(features.glob("feat_th*"))
    shutil.move(merged, features / "shards" / "00000" / merged.name)
    page = write_report([features], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert "half-written" in not_shown(page)
    assert section_html(page, "regions").count('class="region-figure"') == 12


def test_a_torn_metrics_line_is_left_out_and_said(demo_output, tmp_path):
    out, _ = demo_output
    run = tmp_path / "pretrain"
    shutil.copytree(out / "pretrain", run, ignore=shutil.ignore_patterns("checkpoints", "model", "tensorboard"))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 25, "loss_text_ml')
    page = write_report([run], tmp_path / "r.html").path.read_text(encoding="utf-8")
    training = section_html(page, "training")
    assert "line(s) 5 unreadable, left out (a torn last line" in not_shown(page)
    assert training.count("<svg") == 4 and "<td>last step</td><td>20</td>" in training


def test_images_missing_from_the_images_folder_get_blank_canvases(demo_output, tmp_path):
    out, _ = demo_output
    images = tmp_path / "images"
    images.mkdir()
    page = write_report([out / "features", out / "retrieval"], tmp_path / "r.html", images=images, samples=3
                        ).path.read_text(encoding="utf-8")
    regions = section_html(page, "regions")
    assert "<img" not in regions and regions.count('class="canvas"') == 3
    size = json.loads(next((out / "features").glob("img_meta_*.json")).read_text())
    for key in re.findall(r'<svg class="boxes" data-image="([^"]+)"', regions):
        assert f'viewBox="0 0 {size[key]["width"]} {size[key]["height"]}"' in regions
    shown = not_shown(page)
    assert f"3 of 3 sampled image file(s) not found in {images}" in shown
    assert "retrieved image file(s) not at hand, shown by id" in shown


@pytest.mark.parametrize("argument, message", [(["--samples", "-1"], "--samples must be 0 or more"),
                                               (["--images", "/no/such/folder"], "is not a folder")])
def test_bad_options_are_one_line(demo_output, tmp_path, capsys, argument, message):
    out, _ = demo_output
    assert main(["report", str(out / "pairs"), "--out", str(tmp_path / "r.html"), *argument]) == 2
    assert message in capsys.readouterr().err


def test_imported_features_without_images_show_their_boxes_on_a_canvas_of_the_image_size(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (15, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 50, (15, 2))], axis=1).astype(np.float32)
    conf, ids = np.linspace(0.9, 0.3, 15).astype(np.float32), np.arange(15, dtype=np.int64)
    fields = ["img2", "300", "500", ids, conf, ids + 1, conf / 2, "15", boxes,
              rng.standard_normal((15, 2048)).astype(np.float32)]
    (tmp_path / "lxmert.tsv").write_text("\t".join(
        f if isinstance(f, str) else base64.b64encode(np.ascontiguousarray(f).tobytes()).decode() for f in fields)
        + "\n")
    assert main(["import-features", "--source", str(tmp_path / "lxmert.tsv"), "--out", str(tmp_path / "feats")]) == 0
    page = write_report([tmp_path / "feats"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    regions = section_html(page, "regions")
    assert '<svg class="boxes" data-image="img2" viewBox="0 0 500 300"' in regions and 'class="canvas"' in regions
    drawn = [list(map(float, b.split())) for b in re.findall(r'data-box="([^"]+)"', regions)]
    np.testing.assert_allclose(drawn, boxes, atol=0.01)
    assert f">{vocabulary('attributes')[1]} {vocabulary('objects')[0]} 0.90</text>" in regions
    assert "(no image folder: pass --images DIR)" in not_shown(page)


def test_boxes_from_norm_bb_where_the_store_has_no_pixel_boxes():
    from unimo_pipe.workflows.report.regions import _pixel_boxes

    norm = np.array([[0.1, 0.2, 0.5, 1.0, 0.4, 0.8]])
    width, height, boxes = _pixel_boxes({"norm_bb": norm}, {"width": 200, "height": 100})
    assert (width, height) == (200, 100)
    np.testing.assert_allclose(boxes, [[20, 20, 100, 100]])


def test_one_shard_folder_is_reported_alone(demo_output, tmp_path):
    out, _ = demo_output
    page = write_report([out / "augment" / "shards" / "00000"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert sections(page) == ["not-shown", "stage", "augment"]
    assert "<h2>augment: 00000</h2>" in page


def test_a_damaged_file_empties_its_section_only(demo_output, tmp_path):
    out, _ = demo_output
    retrieval = tmp_path / "retrieval"
    shutil.copytree(out / "retrieval", retrieval)
    (retrieval / "shards" / "00000" / "retrieval.npz").write_bytes(b"PK\x03\x04 not a zip any more")
    page = write_report([retrieval, out / "shards"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert sections(page) == ["not-shown", "stage", "retrieval", "stage", "shards"]
    assert "retrieve: retrieval: could not be shown: BadZipFile" in not_shown(page)
    assert 'class="good">match' in section_html(page, "shards")


def test_a_shard_folder_of_a_finished_region_stage_shows_its_images_from_the_merged_store(demo_output, tmp_path):
    out, _ = demo_output
    page = write_report([out / "features" / "shards" / "00000"], tmp_path / "r.html", samples=50
                        ).path.read_text(encoding="utf-8")
    assert section_html(page, "regions").count('class="region-figure"') == 12


def test_a_partial_shard_folder_is_named_as_such(demo_output, tmp_path):
    out, _ = demo_output
    pairs = tmp_path / "pairs"
    shutil.copytree(out / "pairs", pairs)
    (pairs / "shards" / "00001").rename(pairs / "shards" / "00001.partial")
    page = write_report([pairs / "shards" / "00001.partial"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert "partial shard(s) not shown: 00001.partial" in not_shown(page)


def test_an_evaluation_scores_file_is_shown_and_another_file_is_named(tmp_path):
    scores = tmp_path / "eval.json"
    scores.write_text(json.dumps({"ir_r1": 0.4167, "tr_r1": 0.5, "pairs": 60}))
    (tmp_path / "notes.json").write_text('{"about": "not scores"}')
    page = write_report([scores, tmp_path / "notes.json"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert sections(page) == ["not-shown", "scores"]
    assert "<td>ir_r1</td><td>0.4167</td>" in section_html(page, "scores")
    assert f"{tmp_path / 'notes.json'} is a file, not an output folder" in not_shown(page)


def test_positives_show_method_pivot_and_similarity(demo_output, tmp_path):
    out, _ = demo_output
    augment = tmp_path / "augment"
    shutil.copytree(out / "augment", augment)
    rows = (augment / "shards" / "00000" / "augment.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    row["positives"] = [{"text": "A smiling astronaut in an orange space suit sits next to her helmet.",
                         "pivot": "de", "method": "sample", "similarity": 0.8125}]
    (augment / "shards" / "00000" / "augment.jsonl").write_text(json.dumps(row) + "\n")
    section = section_html(write_report([augment], tmp_path / "r.html").path.read_text(encoding="utf-8"), "augment")
    assert '<span class="kind">sample</span>' in section and "pivot: de; similarity 0.812" in section
    assert "<mark>space</mark>" in section and "<td>sample</td><td>1</td>" in section


def test_a_stage_shards_folder_stands_for_its_stage(demo_output, tmp_path):
    out, _ = demo_output
    page = write_report([out / "retrieval" / "shards"], tmp_path / "r.html").path.read_text(encoding="utf-8")
    assert sections(page) == ["not-shown", "stage", "retrieval"]
