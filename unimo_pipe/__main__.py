"""`python -m unimo_pipe ...` is the same as `unimo-pipe ...` (torchrun needs the module form)."""

import sys


def console_entry() -> None:
    """The `unimo-pipe` command; Ctrl-C while its modules are still importing is one line too."""
    try:
        from unimo_pipe.pipeline.cli import main
    except KeyboardInterrupt:
        from unimo_pipe.pipeline.errors import EXIT_INTERRUPTED, INTERRUPTED_MESSAGE

        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(main())


if __name__ == "__main__":  # worker processes started with "spawn" import this module again
    console_entry()
