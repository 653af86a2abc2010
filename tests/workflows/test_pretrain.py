from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import read_jsonl, write_jsonl
from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.feature_store import RegionFeatureWriter

COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
THINGS = ["car", "dog", "boat", "tree", "house", "bird"]


@pytest.fixture(scope="module")
def training_inputs(tmp_path_factory):
    """12 images whose features encode (colour, thing); each caption names both."""
    return make_training_inputs(tmp_path_factory.mktemp("pretrain"))


def make_training_inputs(root: Path, *, soft_labels: bool = True) -> Path:
    """Shards and a tiny tokenizer under `root`: the 12 pairs, a text corpus, and their images (with
    4-class soft labels, or none)."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, 16))
    pairs = []
    with RegionFeatureWriter(root / "feats") as writer:
        for i in range(12):
            colour, thing = COLOURS[i % 6], THINGS[(i + 2 * (i // 6)) % 6]  # 12 distinct captions
            n = 10 + i % 3
            regions = {"features": basis[i] + 0.1 * rng.standard_normal((n, 16)),
                       "norm_bb": np.tile([0.1, 0.1, 0.6, 0.6, 0.5, 0.5], (n, 1)), "conf": np.ones(n)}
            writer.add(f"img{i}.jpg", {**regions, "soft_labels": np.full((n, 4), 0.25)} if soft_labels else regions)
            pairs.append({"id": f"p{i}", "image": f"img{i}.jpg", "caption": f"a {colour} {thing} in the picture"})
    write_jsonl(root / "pairs.jsonl", pairs)
    (root / "corpus.txt").write_text("".join(f"the {c} {t} stands near the road\n" for c in COLOURS for t in THINGS))
    assert main(["shard", "--pairs", str(root / "pairs.jsonl"), "--image-features", str(root / "feats"),
                 "--text-corpus", str(root / "corpus.txt"), "--image-collection", str(root / "feats"),
                 "--out", str(root / "shards")]) == 0
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(root / "tok", [p["caption"] for p in pairs] * 3)
    return root


def pretrain(root: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--shards", str(root / "shards"), "--tokenizer", str(root / "tok"), "--out", str(out),
                 "--batch-size", "6", "--workers", "0", *extra])


def test_tiny_pretraining_learns_and_beats_chance(training_inputs, tmp_path):
    # These pairs have no augmentations, so CMCL needs the batch's other pairs as negatives: by the
    # paper's formula alone a pair with only its own positive has loss 0.
    out = tmp_path / "run"
    assert pretrain(training_inputs, out, "--steps", "150", "--lr", "3e-3", "--log-every", "1",
                    "--checkpoint-every", "50", "--weight-language", "0.1", "--weight-visual", "0.1",
                    "--warmup-steps", "5", "--in-batch-negatives") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 151))
    assert set(rows[0]) == {"step", "loss", "loss_cmcl", "lr", "samples_per_s"}  # --cmcl-first: CMCL alone first
    assert {"loss", "loss_cmcl", "loss_mrm", "loss_image_mrm", "lr", "samples_per_s"} <= set(rows[-1])
    assert any("loss_text_mlm" in r for r in rows) and any("loss_text_seq2seq" in r for r in rows)
    first = np.mean([r["loss_cmcl"] for r in rows[:10]])
    last = np.mean([r["loss_cmcl"] for r in rows[-10:]])
    assert last < 0.5 * first
    zero_shot = json.loads((out / "zero_shot.json").read_text())
    assert zero_shot["zero_shot_ir_r1"] > 2 * zero_shot["zero_shot_chance_r1"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoints" / "latest.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_reproduces_the_uninterrupted_losses(training_inputs, tmp_path, interrupted_at_step):
    args = ["--steps", "6", "--checkpoint-every", "3", "--log-every", "1", "--warmup-steps", "2"]
    assert pretrain(training_inputs, tmp_path / "whole", *args) == 0

    with interrupted_at_step(4):
        assert pretrain(training_inputs, tmp_path / "resumed", *args) == 130
    assert pretrain(training_inputs, tmp_path / "resumed", *args) == 0  # restarts from the step-3 checkpoint
    whole = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # step 4 was logged once, not twice
    for a, b in zip(whole, resumed, strict=True):
        assert set(a) == set(b), a["step"]
        for key in a:
            if key.startswith("loss"):
                expected = None if a[key] is None else pytest.approx(a[key], rel=1e-4, abs=1e-5)
                assert b[key] == expected, (a["step"], key)


def test_two_process_gloo_run_with_torchrun(training_inputs, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "unimo_pipe", "pretrain", "--shards",
               str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"), "--out", str(out),
               "--steps", "4", "--batch-size", "3", "--workers", "0", "--log-every", "1", "--checkpoint-every", "2",
               "--in-batch-negatives"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert result.stdout.count('"step": 4') == 1  # only rank 0 reports


def test_evaluate_a_saved_model_matches_the_zero_shot_figures(training_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(training_inputs, out, "--steps", "40", "--lr", "3e-3", "--warmup-steps", "5",
                    "--in-batch-negatives", "--weight-language", "0.1", "--weight-visual", "0.1") == 0
    zero_shot = json.loads((out / "zero_shot.json").read_text())
    capsys.readouterr()

    def evaluate(*extra: str) -> dict:
        assert main(["evaluate", "--model", str(out / "model"), "--shards", str(training_inputs / "shards"),
                     "--tokenizer", str(training_inputs / "tok"), *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    whole = evaluate("--out", str(tmp_path / "recall.json"))
    assert whole["pairs"] == whole["images"] == 12
    assert {k: whole[k] for k in ("ir_r1", "ir_r5", "tr_r1", "chance_r1")} == {
        k: zero_shot[f"zero_shot_{k}"] for k in ("ir_r1", "ir_r5", "tr_r1", "chance_r1")}
    assert json.loads((tmp_path / "recall.json").read_text()) == whole
    batched = evaluate("--batch-size", "5")  # other padding, same model: the same ranks up to float noise
    assert all(abs(batched[k] - whole[k]) <= 1 / 12 for k in ("ir_r1", "tr_r1"))
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--shards", str(training_inputs / "shards"),
                 "--tokenizer", str(training_inputs / "tok")]) == 2
    assert "missing" in capsys.readouterr().err


def test_retrieval_recall_counts_an_image_once_and_any_of_its_captions():
    import torch

    from unimo_pipe.workflows.evaluate import retrieval_recall

    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # image a has two captions
    texts = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.0, 1.0]])  # the second caption of a looks like b
    recall = retrieval_recall(images, texts, ["a", "a", "b"])
    assert recall["ir_r1"] == round(2 / 3, 4) and recall["tr_r1"] == 1.0 and recall["chance_r1"] == 0.5


def test_finetune_starts_from_the_saved_model_and_learns_retrieval(training_inputs, tmp_path, capsys):
    pretrained = tmp_path / "pretrained"
    assert pretrain(training_inputs, pretrained, "--steps", "5", "--warmup-steps", "1") == 0
    common = ["--shards", str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"),
              "--model", str(pretrained / "model"), "--batch-size", "6", "--workers", "0",
              "--eval-shards", str(training_inputs / "shards")]
    # lr 0: the fine-tuned model is the loaded one, so its figures are the `evaluate` command's
    assert main(["finetune", *common, "--out", str(tmp_path / "still"), "--steps", "1", "--lr", "0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(pretrained / "model"), "--shards", str(training_inputs / "shards"),
                 "--tokenizer", str(training_inputs / "tok"), "--batch-size", "6"]) == 0
    loaded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    still = json.loads((tmp_path / "still" / "retrieval.json").read_text())
    assert {k: still[k] for k in ("ir_r1", "ir_r5", "tr_r1")} == {k: loaded[k] for k in ("ir_r1", "ir_r5", "tr_r1")}

    assert main(["finetune", *common, "--out", str(tmp_path / "tuned"), "--steps", "120", "--lr", "3e-3",
                 "--warmup-steps", "5", "--log-every", "1"]) == 0
    rows = read_jsonl(tmp_path / "tuned" / "metrics.jsonl")
    assert "loss_mlm" not in rows[0] and "loss_mrm" not in rows[0]  # retrieval only
    assert np.mean([r["loss_cmcl"] for r in rows[-10:]]) < 0.5 * np.mean([r["loss_cmcl"] for r in rows[:10]])
    tuned = json.loads((tmp_path / "tuned" / "retrieval.json").read_text())
    assert tuned["ir_r1"] > 2 * tuned["chance_r1"] and (tmp_path / "tuned" / "model" / "config.json").is_file()


def test_finetune_with_the_triplet_loss_improves_retrieval(training_inputs, tmp_path):
    # Hardest-negative hinges stall on a model whose embeddings are all alike (VSE++ notes the same), so
    # this starts from a model pretrained with CMCL, as retrieval fine-tuning does.
    pretrained = tmp_path / "pretrained"
    # Dropout 0.1 and every objective from the first step keep it short of perfect, so the triplet loss
    # has something left to improve.
    assert pretrain(training_inputs, pretrained, "--steps", "150", "--lr", "3e-3", "--warmup-steps", "5",
                    "--in-batch-negatives", "--weight-language", "0.1", "--weight-visual", "0.1",
                    "--dropout", "0.1", "--cmcl-first", "0") == 0
    before = json.loads((pretrained / "zero_shot.json").read_text())
    assert main(["finetune", "--shards", str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"),
                 "--model", str(pretrained / "model"), "--batch-size", "6", "--workers", "0", "--out",
                 str(tmp_path / "tuned"), "--retrieval-loss", "triplet", "--steps", "120", "--lr", "3e-4",
                 "--warmup-steps", "5", "--log-every", "1"]) == 0
    rows = read_jsonl(tmp_path / "tuned" / "metrics.jsonl")
    assert "loss_triplet" in rows[0] and "loss_cmcl" not in rows[0]
    after = json.loads((tmp_path / "tuned" / "retrieval.json").read_text())
    assert after["ir_r1"] + after["tr_r1"] > before["zero_shot_ir_r1"] + before["zero_shot_tr_r1"]


def test_finetune_needs_a_model_and_refuses_init_with_model(training_inputs, tmp_path, capsys):
    base = ["--shards", str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"),
            "--out", str(tmp_path / "o")]
    assert main(["finetune", *base]) == 2
    assert "model" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert main(["pretrain", *base, "--init", "roberta-base", "--model", str(tmp_path / "m")]) == 2
    assert "not both" in capsys.readouterr().err


def test_image_text_matching_alone_learns(training_inputs, tmp_path):
    # Matching needs the joint encoder to bind words to regions: a tiny model sits at ln 2 for ~100 steps,
    # then learns.
    out = tmp_path / "itm"
    assert pretrain(training_inputs, out, "--steps", "400", "--lr", "1e-3", "--warmup-steps", "10",
                    "--log-every", "1", "--tiny-hidden", "64", "--weight-cmcl", "0", "--weight-language", "0",
                    "--weight-visual", "0", "--weight-matching", "1", "--no-single-modal") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert "loss_itm" in rows[0] and "loss_cmcl" not in rows[0] and "loss_mlm" not in rows[0]
    assert np.mean([r["loss_itm"] for r in rows[-20:]]) < 0.6 * np.mean([r["loss_itm"] for r in rows[:20]])


def test_one_task_per_step_trains_one_drawn_task_at_a_time(training_inputs, tmp_path):
    out = tmp_path / "uniter"
    assert pretrain(training_inputs, out, "--steps", "30", "--log-every", "1", "--one-task-per-step",
                    "--weight-matching", "1", "--weight-alignment", "0.1", "--no-single-modal",
                    "--cmcl-first", "0") == 0
    tasks = {"loss_cmcl": "cmcl", "loss_mlm": "language", "loss_seq2seq": "language", "loss_mrm": "regions",
             "loss_itm": "matching", "loss_wra": "matching"}
    drawn = []
    for row in read_jsonl(out / "metrics.jsonl"):
        found = {tasks[name] for name in row if name in tasks and row[name] is not None}
        assert len(found) == 1, row  # one task per step
        drawn += found
    assert set(drawn) == {"cmcl", "language", "regions", "matching"}
    assert drawn.count("matching") >= 3  # weights 1 + 0.1 against 1 for each of the others: about a quarter


def test_pretrain_with_dataloader_worker_processes(training_inputs, tmp_path):
    # the default --workers 2 forks after the recipe has read the feature store in the parent
    out = tmp_path / "workers"
    assert main(["pretrain", "--shards", str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"),
                 "--out", str(out), "--batch-size", "4", "--workers", "2", "--steps", "3", "--warmup-steps", "1",
                 "--log-every", "1"]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_word_region_alignment_through_the_cli(training_inputs, tmp_path):
    out = tmp_path / "wra"
    assert pretrain(training_inputs, out, "--steps", "3", "--warmup-steps", "1", "--log-every", "1",
                    "--weight-alignment", "0.1", "--no-single-modal", "--cmcl-first", "0") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert all("loss_wra" in r and "loss_itm" in r and "loss_cmcl" in r for r in rows)


def test_evaluate_names_a_bad_model_folder_or_tokenizer_in_one_line(training_inputs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{}")
    (tmp_path / "corrupt" / "model.safetensors").write_text("garbage")
    shards, tokenizer = str(training_inputs / "shards"), str(training_inputs / "tok")
    for model in ("empty", "corrupt"):
        assert main(["evaluate", "--model", str(tmp_path / model), "--shards", shards, "--tokenizer", tokenizer]) == 2
        error = capsys.readouterr().err
        assert "is not a saved unimo-pipe model" in error and "Traceback" not in error
    assert main(["evaluate", "--model", str(tmp_path / "empty"), "--shards", shards,
                 "--tokenizer", str(tmp_path / "empty")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_region_class_head_takes_its_width_from_the_feature_store(training_inputs, tmp_path):
    import torch

    plain = make_training_inputs(tmp_path / "plain", soft_labels=False)
    for root, classes in ((training_inputs, 4), (plain, None)):  # no soft labels: no class head at all
        out = tmp_path / f"classes-{classes}"
        assert pretrain(root, out, "--steps", "1", "--warmup-steps", "1") == 0
        state = torch.load(out / "checkpoints" / "step-00000001.pt", weights_only=True)["model"]
        assert (state["class_head.weight"].shape[0] if "class_head.weight" in state else None) == classes


def stop_during_step(monkeypatch, recipe_class, step: int, error: BaseException) -> None:
    """Make `recipe_class`'s training step `step` (counted from 1) raise `error`."""
    original = recipe_class._micro_batch_losses

    def failing(self, generator):
        if self.loop.step == step - 1:
            raise error
        return original(self, generator)

    monkeypatch.setattr(recipe_class, "_micro_batch_losses", failing)


def assert_stopped_with_a_checkpoint(out: Path, step: int, caplog) -> None:
    assert not (out / "model").exists()  # a half-trained model is not the final one
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == step
    [line] = [r.getMessage() for r in caplog.records if "rerun the same command to resume" in r.getMessage()]
    assert str(out / "checkpoints" / f"step-{step:08d}.pt") in line


@pytest.mark.parametrize("error", [RuntimeError("a failing step"), KeyboardInterrupt()])
def test_a_run_that_stops_early_writes_no_model_and_resumes_from_its_checkpoint(training_inputs, tmp_path,
                                                                                monkeypatch, caplog, error):
    from unimo_pipe.workflows.pretrain import PretrainRecipe

    out, args = tmp_path / "run", ["--steps", "5", "--checkpoint-every", "3", "--warmup-steps", "1"]
    with monkeypatch.context() as patch:
        stop_during_step(patch, PretrainRecipe, 5, error)
        if isinstance(error, KeyboardInterrupt):
            assert pretrain(training_inputs, out, *args) == 130
        else:
            with pytest.raises(RuntimeError, match="a failing step"):
                pretrain(training_inputs, out, *args)
    assert_stopped_with_a_checkpoint(out, 3, caplog)
    assert pretrain(training_inputs, out, *args) == 0
    assert (out / "model" / "model.safetensors").is_file() and (out / "zero_shot.json").is_file()


def test_finetune_that_stops_early_writes_no_model(training_inputs, tmp_path, monkeypatch, caplog):
    from unimo_pipe.workflows.pretrain import FinetuneRecipe

    assert pretrain(training_inputs, tmp_path / "pretrained", "--steps", "1", "--warmup-steps", "1") == 0
    out = tmp_path / "tuned"
    command = ["finetune", "--shards", str(training_inputs / "shards"), "--tokenizer", str(training_inputs / "tok"),
               "--model", str(tmp_path / "pretrained" / "model"), "--batch-size", "6", "--workers", "0", "--out",
               str(out), "--steps", "3", "--checkpoint-every", "2", "--warmup-steps", "1"]
    with monkeypatch.context() as patch:
        stop_during_step(patch, FinetuneRecipe, 3, KeyboardInterrupt())
        assert main(command) == 130
    assert_stopped_with_a_checkpoint(out, 2, caplog)
    assert main(command) == 0
    assert (out / "model" / "config.json").is_file() and (out / "retrieval.json").is_file()


@pytest.mark.skipif(not __import__("torch").amp.is_autocast_available("cpu"), reason="no CPU autocast in this torch")
def test_a_pretrain_step_in_bf16_on_cpu(training_inputs, tmp_path):
    # bf16 is the GPU default; asking for it on CPU shows dtype mistakes in the whole step (every stream
    # and objective, the optimizer, the checkpoint) without a GPU.
    out = tmp_path / "bf16"
    assert pretrain(training_inputs, out, "--steps", "2", "--warmup-steps", "1", "--log-every", "1",
                    "--precision", "bf16", "--in-batch-negatives", "--weight-matching", "1",
                    "--weight-classification", "1", "--weight-alignment", "0.1", "--cmcl-first", "0") == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert {"loss_cmcl", "loss_mrm", "loss_moc", "loss_itm", "loss_wra", "loss_image_mrm", "loss_image_moc"} <= set(
        rows[0]) and all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss") and v is not None)
    assert (out / "model" / "model.safetensors").is_file()


def test_a_rerun_with_other_options_never_continues_the_old_checkpoints(training_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(training_inputs, out, "--steps", "4", "--checkpoint-every", "2") == 0
    assert pretrain(training_inputs, out, "--steps", "4", "--checkpoint-every", "2", "--lr", "1e-3",
                    "--batch-size", "4") == 2
    assert f"{out} holds a pretrain run made with other options (changed: batch_size, lr)" in capsys.readouterr().err
    assert pretrain(training_inputs, out, "--steps", "4", "--log-every", "1", "--workers", "1") == 0  # run-only
    assert pretrain(training_inputs, out, "--steps", "4", "--lr", "1e-3", "--overwrite", "--log-every", "1") == 0
    assert [row["step"] for row in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]  # a new run from step 1
    assert json.loads((out / "run.json").read_text())["lr"] == 1e-3


def test_resume_from_starts_a_new_run_from_a_checkpoint_s_weights(training_inputs, tmp_path):
    import torch

    first = tmp_path / "first"
    assert pretrain(training_inputs, first, "--steps", "4", "--checkpoint-every", "4") == 0
    checkpoint = first / "checkpoints" / "step-00000004.pt"
    second = tmp_path / "second"
    assert pretrain(training_inputs, second, "--steps", "2", "--lr", "0", "--warmup-steps", "0",
                    "--resume-from", str(checkpoint), "--log-every", "1") == 0
    assert [row["step"] for row in read_jsonl(second / "metrics.jsonl")] == [1, 2]
    before = torch.load(checkpoint, weights_only=True)["model"]
    after = torch.load(second / "checkpoints" / "step-00000002.pt", weights_only=True)["model"]
    assert all(torch.equal(before[name], after[name]) for name in before)  # lr 0: the weights it started from


def test_a_damaged_checkpoint_is_one_clear_error(training_inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(training_inputs, out, "--steps", "2", "--checkpoint-every", "2") == 0
    (out / "checkpoints" / "step-00000002.pt").write_bytes(b"not a checkpoint")
    assert pretrain(training_inputs, out, "--steps", "2", "--checkpoint-every", "2") == 2
    err = capsys.readouterr().err
    assert "step-00000002.pt is not a readable checkpoint" in err and "weights_only" not in err


def test_metrics_lines_are_interval_means_with_every_loss(training_inputs, tmp_path):
    common = ["--steps", "8", "--warmup-steps", "2", "--cmcl-first", "0"]
    assert pretrain(training_inputs, tmp_path / "each", *common, "--log-every", "1") == 0
    assert pretrain(training_inputs, tmp_path / "fours", *common, "--log-every", "4") == 0
    each, fours = read_jsonl(tmp_path / "each" / "metrics.jsonl"), read_jsonl(tmp_path / "fours" / "metrics.jsonl")
    assert [r["step"] for r in fours] == [4, 8]
    losses = {name for row in each for name in row if name.startswith("loss")}
    assert {"loss_mlm", "loss_seq2seq", "loss_text_mlm", "loss_text_seq2seq"} <= losses  # drawn per step
    for line, steps in zip(fours, (each[:4], each[4:]), strict=True):
        assert losses <= set(line)  # every loss on every line
        for name in losses:
            values = [r[name] for r in steps if r.get(name) is not None]
            assert line[name] == (pytest.approx(np.mean(values), abs=1e-5) if values else None), name
        assert line["lr"] == steps[-1]["lr"]
    config = yaml.safe_load((tmp_path / "fours" / "config.yaml").read_text())
    assert config["command"] == "pretrain" and config["log_every"] == 4 and config["steps"] == 8
    assert config["shards"] == str(training_inputs / "shards")


def test_cmcl_without_any_negative_warns_and_the_tiny_encoder_has_no_dropout(training_inputs, tmp_path, caplog):
    # The fixture's pairs have no hard negatives: without in-batch ones, CMCL's loss is 0 at every step.
    assert pretrain(training_inputs, tmp_path / "zero", "--steps", "2", "--warmup-steps", "1",
                    "--no-in-batch-negatives") == 0
    assert "CMCL has no negatives (the pairs of" in caplog.text
    assert all(r["loss_cmcl"] == 0 for r in read_jsonl(tmp_path / "zero" / "metrics.jsonl"))
    config = json.loads((tmp_path / "zero" / "model" / "config.json").read_text())["encoder"]
    assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.0
    caplog.clear()
    assert pretrain(training_inputs, tmp_path / "ok", "--steps", "2", "--warmup-steps", "1", "--in-batch-negatives",
                    "--dropout", "0.2") == 0
    assert "CMCL has no negatives" not in caplog.text
    assert json.loads((tmp_path / "ok" / "model" / "config.json").read_text())["encoder"]["hidden_dropout_prob"] == 0.2


def test_chance_at_every_k_both_ways():
    from unimo_pipe.workflows.evaluate import retrieval_chance

    chance = retrieval_chance(["a", "a", "b", "c"])  # 3 images, 4 captions; a has two
    assert [chance[f"chance_r{k}"] for k in (1, 5, 10)] == [round(1 / 3, 4), 1.0, 1.0]
    # image->text at K=1: a's two captions of four, b's and c's one: (1/2 + 1/4 + 1/4) / 3
    assert chance["chance_tr_r1"] == round(1 / 3, 4) and chance["chance_tr_r5"] == 1.0
