"""The command-line faces of tdms: argparse -> one call each; only a UserError becomes a one-line message."""

import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (`timeout`, a scheduler, a container stop): handled like Ctrl-C, exit code 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in the main thread, so a command cleans up as it does on Ctrl-C
    (partial outputs removed, the last checkpoint intact) instead of dying without a word."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def interrupted_code(err: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 143 (128 + SIGTERM) for SIGTERM, 130 (128 + SIGINT) for Ctrl-C."""
    return 143 if isinstance(err, Terminated) else 130
