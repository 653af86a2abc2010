"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the command, the config or the inputs; the message names the problem and the fix."""


class ConfigError(UserError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__(self._summary())

    def _summary(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0]
        return f"{len(self.errors)} config errors: " + "; ".join(self.errors)


class RecordError(Exception):
    """One input record is bad; the runner counts it under `reason` and the run goes on."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
