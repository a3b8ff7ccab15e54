"""SIGTERM is handled like Ctrl-C even when Python drops the exception its handler raised (the handler ran inside a
destructor): the signal is recorded and `check()` raises it at the loops' next step."""

import os
import signal
import sys

import pytest
from tqdm import tqdm

from tdms import interrupts
from tdms.interrupts import Terminated, check, interrupted_code, stop_on_sigterm


@pytest.fixture
def sigterm_handler():
    """stop_on_sigterm() for one test; the process's handler and tqdm's monitor as they were afterwards."""
    before, monitor = signal.getsignal(signal.SIGTERM), tqdm.monitor_interval
    stop_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, before)
    tqdm.monitor_interval = monitor
    interrupts._received = False


class SignalsInItsDestructor:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs at a jump back: here, inside the destructor
            pass


def test_a_sigterm_dropped_inside_a_destructor_is_raised_by_check(sigterm_handler, monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))  # "Exception ignored in ..."
    check()  # nothing arrived yet
    SignalsInItsDestructor()  # deleted at once; the Terminated its handler raised is dropped
    assert dropped == [Terminated]
    with pytest.raises(Terminated) as e:
        check()
    assert interrupted_code(e.value) == 143


def test_a_sigterm_in_plain_code_raises_at_once(sigterm_handler):
    with pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass


def test_a_new_command_starts_with_no_signal_recorded(sigterm_handler):
    interrupts._received = True
    stop_on_sigterm()
    check()
    assert tqdm.monitor_interval == 0  # no monitor thread whose join could hang the exit


def test_ctrl_c_exits_130():
    assert interrupted_code(KeyboardInterrupt()) == 130
