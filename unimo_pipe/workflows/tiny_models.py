"""`unimo-pipe make-tiny-models OUT`: small random-weight models every stage can use in tests and demos.

They run the real code paths (real loading code, real file formats) but their outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path

TINY_DETECTOR_FILE = "detector-tiny.safetensors"


def make_tiny_models(out: Path, *, seed: int = 0) -> list[Path]:
    """Write each tiny model under `out`; returns the paths written."""
    from unimo_pipe.models.detector import build_detector
    from unimo_pipe.models.detector_weights import save_weights
    from unimo_pipe.models.tiny_translation import build_tiny_marian
    from unimo_pipe.workflows import demo_data_dir

    out.mkdir(parents=True, exist_ok=True)
    detector_path = out / TINY_DETECTOR_FILE
    save_weights(build_detector("tiny", seed=seed), detector_path)
    texts = (demo_data_dir() / "corpus.txt").read_text(encoding="utf-8").splitlines()
    translators = [build_tiny_marian(out / f"translator-{s}-{t}", source=s, target=t, texts=texts, seed=seed + i)
                   for i, (s, t) in enumerate((("en", "de"), ("de", "en")))]
    from unimo_pipe.models.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(out / "tokenizer-tiny", texts)
    return [detector_path, *translators, tokenizer]
