"""Shared fixtures. Threads are capped: CI has 2 cores and torch/numpy oversubscribe them easily."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHORT_MODEL_POSITIONS = 64
SCHEDULER_VARIABLES = ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _no_scheduler_environment(monkeypatch):
    """Tests must not pick up a shard selection from the machine they run on."""
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_translators(tmp_path_factory):
    """make-tiny-models output (random-weight detector and Marian en-de / de-en), plus CTranslate2 copies."""
    from unimo_pipe.models.translator import convert_for_ctranslate2
    from unimo_pipe.workflows.tiny_models import make_tiny_models

    root = tmp_path_factory.mktemp("tiny-models")
    make_tiny_models(root)
    for direction in ("en-de", "de-en"):
        convert_for_ctranslate2(str(root / f"translator-{direction}"), root / f"ct2-{direction}")
    return root


@pytest.fixture(scope="session")
def short_translators(tmp_path_factory):
    """Tiny Marian en-de / de-en with only 64 positions (shorter than many captions), plus CTranslate2 copies."""
    from unimo_pipe.models.tiny_translation import build_tiny_marian
    from unimo_pipe.models.translator import convert_for_ctranslate2
    from unimo_pipe.workflows import demo_data_dir

    root = tmp_path_factory.mktemp("short-translators")
    texts = (demo_data_dir() / "corpus.txt").read_text(encoding="utf-8").splitlines()
    for seed, direction in enumerate(("en-de", "de-en")):
        source, target = direction.split("-")
        build_tiny_marian(root / f"translator-{direction}", source=source, target=target, texts=texts, seed=seed,
                          max_positions=SHORT_MODEL_POSITIONS)
        convert_for_ctranslate2(str(root / f"translator-{direction}"), root / f"ct2-{direction}")
    return root


@pytest.fixture(scope="session")
def wordnet_folder() -> Path:
    """A WordNet dict folder (Debian's wordnet-base or NLTK's data); CI installs wordnet-base."""
    from unimo_pipe.models.wordnet import locate

    found = locate(None)
    if found is None:
        pytest.skip("WordNet not installed (apt install wordnet-base, or python -m nltk.downloader wordnet)")
    return found
