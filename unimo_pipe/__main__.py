"""`python -m unimo_pipe ...` is the same as `unimo-pipe ...` (torchrun needs the module form)."""

from unimo_pipe.pipeline.cli import console_entry

console_entry()
