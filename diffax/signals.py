"""SIGTERM (preemption) and SIGINT (Ctrl-C) from the first second of a run: nothing is lost and the exit code says
what happened.

    before the first step   print it, exit 0 at once without a checkpoint (nothing was trained, nothing is lost:
                            the previous checkpoint, if any, is untouched)
    in the loop             save a checkpoint after the step in flight, then exit 0 (SIGTERM) or 130 (SIGINT)
    a second SIGINT         exit at once (130), without saving

`launch.py` calls `install()` before its heavy imports; `train` wraps its loop in `handled()` (which installs the
handlers when diffax runs as a library) and calls `first_step_done()` once the first step has compiled and run:
until then (imports, restoring, compiling) a signal exits at once. Multi-process runs: JAX's
coordination service takes SIGTERM once `jax.distributed` starts and every process agrees on the step through
`reached_preemption_sync_point`; a SIGINT is agreed on at the next log step (`diffax.modes.train`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT)
_state = {"installed": False, "loop": False, "requested": None}


def _handler(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if not _state["loop"]:
        _say(f"{name} before the first step: exiting without a checkpoint")
        os._exit(0)
    if signum == signal.SIGINT and _state["requested"] == signal.SIGINT:
        _say("second SIGINT: exiting now, without saving")
        os._exit(130)
    _state["requested"] = signum
    _say(f"{name}: saving a checkpoint after this step, then exiting (Ctrl-C again to exit now)")


def _say(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def install() -> None:
    """Handles SIGTERM and SIGINT from now on (idempotent)."""
    if not _state["installed"]:
        for signum in HANDLED:
            signal.signal(signum, _handler)
        _state["installed"] = True


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Around the training loop: installs the handlers if `install()` was not called (library use) and restores
    the previous ones after."""
    previous = None if _state["installed"] else {signum: signal.getsignal(signum) for signum in HANDLED}
    install()
    try:
        yield
    finally:
        if previous is not None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _state.update(installed=False, loop=False, requested=None)


def first_step_done() -> None:
    """From now on a signal asks for a checkpoint after the step in flight instead of exiting."""
    _state["loop"] = True


def requested() -> int | None:
    """The signal that asked the loop to stop (signal.SIGTERM or signal.SIGINT), or None."""
    return _state["requested"]


def exit_code() -> int:
    """The process's exit code after the loop: 0, or 130 if a SIGINT stopped it."""
    return 130 if _state["requested"] == signal.SIGINT else 0
