"""`--executor ray` on a local Ray instance (2 CPUs): the same data files as the local executor, folders that
either executor half-wrote finished by the other, and one clear line without Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from unimo_pipe.pipeline.cli import main
from unimo_pipe.pipeline.workflow import load_config_file, run_steps

ray = pytest.importorskip("ray")

# What a run writes about itself (timings, its options, its locks), not data: excluded from comparisons.
RUN_RECORDS = {"stats.json", "summary.json", "config.yaml"}


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def data_files(out: Path) -> dict[str, object]:
    """Every data file under `out` by relative path (run records and locks left out); an LMDB by its keys
    and values, since its pages depend on how its transactions were cut, not on what it holds."""
    from unimo_pipe.pipeline.lmdb_store import LmdbReader

    files: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        name = path.relative_to(out).as_posix()
        if path.name == "data.mdb":
            reader = LmdbReader(path.parent)
            files[name] = sorted(reader.items_raw())
            reader.close()
        elif path.is_file() and path.name not in RUN_RECORDS | {"lock.mdb"} and not path.name.startswith(".lock-"):
            files[name] = path.read_bytes()
    return files


def assert_same_data(first: Path, second: Path) -> None:
    a, b = data_files(first), data_files(second)
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name] != b[name]]
    assert differing == []


def demo_steps(out: Path, models: Path, executor: dict | None = None):
    from unimo_pipe.workflows import demo_data_dir, shipped_config

    variables = {"out": str(out), "data": str(demo_data_dir()), "models": str(models)}
    return load_config_file(shipped_config("demo"), variables=variables, executor=executor)


def test_every_stage_of_the_demo_writes_the_same_files_on_ray(ray_instance, tmp_path, tiny_translators):
    # import-pairs, import-corpus, augment (back-translation and scene graphs), extract-regions, retrieve
    # (with embed-text and embed-images) and shard, as the demo workflow runs them.
    # Both runs write to one path (outputs name their inputs' paths), the local one moved aside first.
    run = tmp_path / "run"
    run_steps(demo_steps(run, tiny_translators))
    run.rename(tmp_path / "local")
    results = run_steps(demo_steps(run, tiny_translators, {"executor": "ray", "ray_workers": 2}))
    assert all(r.complete and r.shards_run == r.shards_total for r in results)
    for step in ("pairs", "corpus", "augment", "feats", "retrieval", "shards"):
        assert_same_data(tmp_path / "local" / step, run / step)
    assert (run / "retrieval" / "text_emb" / "shards").is_dir()  # its sub-stage ran on Ray too


def npz_folder(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(count):
        np.savez(root / f"img{i:02d}.npz", features=rng.standard_normal((5, 8)).astype(np.float32),
                 norm_bb=rng.uniform(0, 1, (5, 6)).astype(np.float32))
    return root


def import_features(source: Path, out: Path, *extra: str) -> int:
    return main(["import-features", "--source", str(source), "--out", str(out), "--shard-size", "3", *extra])


def test_import_features_on_ray_and_folders_each_executor_half_wrote(ray_instance, tmp_path):
    source = npz_folder(tmp_path / "npz")
    assert import_features(source, tmp_path / "local") == 0
    assert import_features(source, tmp_path / "ray", "--executor", "ray") == 0
    assert data_files(tmp_path / "local") and data_files(tmp_path / "local") == data_files(tmp_path / "ray")
    # Half by the local executor (shards 0 and 2, as a killed run or one SLURM worker leaves them), the
    # rest by Ray; and the other way round. A leftover .partial folder is redone.
    assert import_features(source, tmp_path / "mixed", "--shard", "0/2") == 0
    (tmp_path / "mixed" / "shards" / "00001.partial").mkdir()
    assert import_features(source, tmp_path / "mixed", "--executor", "ray") == 0
    assert import_features(source, tmp_path / "mixed2", "--shard", "0/2", "--executor", "ray") == 0
    assert import_features(source, tmp_path / "mixed2") == 0
    for mixed in ("mixed", "mixed2"):
        assert_same_data(tmp_path / "local", tmp_path / mixed)


def test_a_stage_error_on_a_ray_worker_is_the_same_one_line(ray_instance, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "1", "image": "a.jpg", "caption": "a dog"}\n')
    assert main(["import-pairs", "--captions", str(pairs), "--out", str(tmp_path / "p")]) == 0
    assert main(["shard", "--pairs", str(tmp_path / "p"), "--augment", str(tmp_path / "p"), "--out",
                 str(tmp_path / "s"), "--executor", "ray"]) == 2
    assert "is output of `import-pairs`: pass the --out folder of a `unimo-pipe augment` run" in capsys.readouterr().err


def test_without_ray_the_ray_executor_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "1", "image": "a.jpg", "caption": "a dog"}\n')
    assert main(["import-pairs", "--captions", str(pairs), "--out", str(tmp_path / "p"), "--executor", "ray"]) == 2
    assert "--executor ray needs Ray: pip install 'unimo-pipe[ray]'" in capsys.readouterr().err


def test_gpu_stages_reserve_a_gpu_where_the_cluster_has_one():
    from unimo_pipe.pipeline.ray_executor import gpus_per_actor
    from unimo_pipe.pipeline.stage import get_stage

    extract, pairs = get_stage("extract-regions"), get_stage("import-pairs")
    assert extract.wants_gpu(SimpleNamespace(device="auto")) and not extract.wants_gpu(SimpleNamespace(device="cpu"))
    assert not pairs.wants_gpu(SimpleNamespace())  # no --device: a CPU stage
    assert gpus_per_actor(0, wants_gpu=True, cluster_gpus=8) == 1.0
    assert gpus_per_actor(0, wants_gpu=True, cluster_gpus=0) == 0.0
    assert gpus_per_actor(0, wants_gpu=False, cluster_gpus=8) == 0.0
    assert gpus_per_actor(0.5, wants_gpu=False, cluster_gpus=8) == 0.5


def test_a_workflow_runs_on_ray_from_its_executor_key_or_the_run_flag(ray_instance, tmp_path):
    (tmp_path / "caps.jsonl").write_text("".join(f'{{"id": "{i}", "image": "{i}.jpg", "caption": "a dog {i}"}}\n'
                                                 for i in range(20)))
    workflow = tmp_path / "wf.yaml"
    workflow.write_text("executor: ray\nray_workers: 2\nsteps:\n  - stage: import-pairs\n    captions: [caps.jsonl]\n"
                        "    shard_size: 5\n    out: pairs\n")
    [step] = load_config_file(workflow)
    assert (step.options.executor, step.options.ray_workers) == ("ray", 2)
    [step] = load_config_file(workflow, executor={"executor": "local"})
    assert step.options.executor == "local"  # `run --executor` overrides the workflow
    workflow.write_text(workflow.read_text().replace("executor: ray\n", ""))
    assert main(["run", str(workflow), "--executor", "ray"]) == 0
    assert json.loads((tmp_path / "pairs" / "summary.json").read_text())["ok"] == 20
