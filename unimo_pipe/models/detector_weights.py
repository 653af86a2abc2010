"""Loading detector weights: the community BUTD checkpoint (detectron2 format pickle), .pth or safetensors.

The community file is a latin-1 pickle in detectron2's model-zoo layout, {"model": {name: float32 ndarray},
"__author__": ...}; the other top-level keys are metadata. It is read by an unpickler that accepts only
plain containers and numpy arrays, never code. Checkpoint names map to ours through
`checkpoint_to_model_name` (the model is built with detectron2's names, so the map only strips wrappers);
missing, unexpected and mis-shaped parameters are reported by name. The port loads with strict=False, so
buffers the file may lack keep their initial values there: FrozenBN running statistics mean 0 / variance 1,
and cell anchors computed from the anchor settings. We fill exactly those two defaults.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unimo_pipe.models.detector import BottomUpAttention
from unimo_pipe.pipeline.checkpoints import load_checkpoint
from unimo_pipe.pipeline.errors import UserError

logger = logging.getLogger("unimo_pipe")

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; a pure function
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}
_ANCHOR_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
_DEFAULTABLE_SUFFIXES = {".norm.running_mean": 0.0, ".norm.running_var": 1.0}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain arrays are allowed")
        return super().find_class(module, name)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Name -> tensor from a .pkl (detectron2 format), .pth/.pt or .safetensors file."""
    if not path.is_file():
        raise UserError(f"detector weights not found: {path}: pass the checkpoint file with --weights")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        raw = _read_detectron2_pickle(path)
    elif suffix in (".pth", ".pt", ".bin", ".safetensors"):
        raw = load_checkpoint(path)
    else:
        raise UserError(f"{path}: unknown weights format {suffix!r}: use .pkl, .pth or .safetensors")
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]  # detectron2 model-zoo layout: other top-level keys are metadata
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a dict of parameters")
    return {checkpoint_to_model_name(k): _as_tensor(k, v, path) for k, v in raw.items()}


def _read_detectron2_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read detector weights {path}: {exc}") from None


def checkpoint_to_model_name(name: str) -> str:
    """The explicit name map: our modules carry the port's names, so only wrappers are stripped."""
    return name.removeprefix("module.")


def _as_tensor(name: str, value: Any, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise UserError(f"{path}: parameter {name} is a {type(value).__name__}, not an array")


def load_weights(model: BottomUpAttention, path: Path) -> None:
    """Load a checkpoint into `model`, refusing missing, unexpected or mis-shaped parameters by name."""
    state = read_checkpoint(path)
    expected = model.state_dict()
    _fill_defaults(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_some(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shape {len(mis_shaped)}: {_some(mis_shaped)}")
    if problems:
        raise UserError(f"detector weights {path} do not fit the model ({'; '.join(problems)}): "
                        "check --detector matches the checkpoint")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _fill_defaults(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, tensor in expected.items():
        if name in state:
            continue
        for suffix, value in _DEFAULTABLE_SUFFIXES.items():
            if name.endswith(suffix) and name.removesuffix(suffix) + ".norm.weight" in state:
                state[name] = torch.full_like(tensor, value)
        if name == _ANCHOR_KEY:
            state[name] = tensor.clone()
    if _ANCHOR_KEY in state and not torch.allclose(state[_ANCHOR_KEY].float(), expected[_ANCHOR_KEY], atol=1e-3):
        logger.warning("the checkpoint's cell anchors differ from detectron2's size-major anchors; using the file's")


def _some(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def save_weights(model: BottomUpAttention, path: Path) -> None:
    """Our own layout: a safetensors state dict with the port's names."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
