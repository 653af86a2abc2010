"""Loading saved tensors (torch checkpoints, safetensors) so that a damaged file is one line naming it.

torch's own messages for a truncated or foreign file are long, and one of them advises
`weights_only=False`, which would run code from the file: never shown, never followed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from unimo_pipe.pipeline.errors import CorruptFileError


def load_checkpoint(path: Path, *, map_location: Any = "cpu") -> Any:
    """What `path` holds: a .safetensors file's tensors, or a torch.save file's tensors and containers."""
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path, map_location)
    return _load_torch(path, map_location)


def _load_torch(path: Path, map_location: Any) -> Any:
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CorruptFileError(f"{path} holds objects other than tensors and plain containers, which are "
                                   "never unpickled (they could run code): pass a checkpoint of tensors") from None
        raise _damaged(path, exc) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the CLI names the path
    except Exception as exc:  # foreign bytes fail anywhere in the unpickler (IndexError, KeyError, OSError, ...)
        raise _damaged(path, exc) from None


def _load_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = map_location if isinstance(map_location, str) else str(map_location)
    try:
        return load_file(str(path), device=device)
    except SafetensorError as exc:
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: Exception) -> CorruptFileError:
    return CorruptFileError(f"{path} is not a readable checkpoint ({_reason(exc)}): it is truncated or damaged (a copy "
                            "or a save that did not finish?): restore it or pass another")


def _reason(exc: Exception) -> str:
    """The gist of a loader's message: its last line (where torch puts the cause), first sentence, no advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    gist = lines[-1].split(". ")[0][:160] if lines else ""
    return gist if gist and "weights_only" not in gist else type(exc).__name__
