"""Name -> implementation tables for swappable parts (stages, detectors, engines, index types).

Entries may be registered lazily as "module:attribute" strings, so listing names never imports
heavy libraries; the module is imported only when an entry is used.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from unimo_pipe.pipeline.errors import UserError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register_lazy(self, name: str, target: str) -> None:
        """Register `target` ("package.module:Attribute") under `name` without importing it."""
        self._add(name, target)

    def register(self, name: str):
        """Decorator form: `@REGISTRY.register("name")`."""

        def decorate(obj: Any) -> Any:
            self._add(name, obj)
            return obj

        return decorate

    def _add(self, name: str, obj: Any) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(self._entries)}"
            raise UserError(f"unknown {self.kind} {name!r}: {hint}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries[name] = entry
        return entry
