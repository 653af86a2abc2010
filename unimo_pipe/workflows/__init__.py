"""The commands as readable recipes (demo, ...) and the shipped YAML workflows under configs/."""

from importlib.resources import files
from pathlib import Path


def shipped_config(name: str) -> Path:
    """Path of a YAML workflow shipped in the package, e.g. shipped_config("demo")."""
    return Path(str(files(__name__) / "configs" / f"{name}.yaml"))


def demo_data_dir() -> Path:
    return Path(str(files(__name__) / "demo_data"))
