"""Stopping a command on SIGTERM as on Ctrl-C, reliably.

SIGTERM (`timeout`, a scheduler, a container stop) raises `Terminated`, a KeyboardInterrupt, in the main thread, so a
command cleans up as it does on Ctrl-C (partial outputs removed, the last checkpoint intact) instead of dying
without a word. Python runs a signal handler wherever the main thread is; when that is a destructor, a weakref
callback or a generator being closed, the exception it raises is printed as "Exception ignored" and dropped, and the
command would run on. So the handler also records the signal, and the long loops (training steps, frames written)
call `check()`, which raises `Terminated` again at the next step once a SIGTERM came.
"""

import signal

from tqdm import tqdm


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, exit code 143."""


_received = False


def _on_sigterm(signum, frame):
    global _received
    _received = True
    raise Terminated()


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in the main thread (and `check()` raises it at the next step).

    Also turns off tqdm's monitor thread: it takes tqdm's locks every 10 s, and the last bar's close joins it, so a
    signal that lands between tqdm's two lock acquisitions (leaving one held) would hang the exit forever. The
    monitor only retunes `miniters` of stalled bars."""
    global _received
    _received = False
    tqdm.monitor_interval = 0
    signal.signal(signal.SIGTERM, _on_sigterm)


def check() -> None:
    """Raise Terminated if a SIGTERM arrived (its first raise may have been dropped); nothing otherwise."""
    if _received:
        raise Terminated()


def interrupted_code(err: KeyboardInterrupt) -> int:
    """The exit status of an interrupted command: 143 (128 + SIGTERM) for SIGTERM, 130 (128 + SIGINT) for Ctrl-C."""
    return 143 if isinstance(err, Terminated) else 130
