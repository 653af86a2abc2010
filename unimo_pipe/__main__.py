"""`python -m unimo_pipe ...` is the same as `unimo-pipe ...` (torchrun needs the module form)."""

from unimo_pipe.pipeline.cli import console_entry

if __name__ == "__main__":  # worker processes started with "spawn" import this module again
    console_entry()
