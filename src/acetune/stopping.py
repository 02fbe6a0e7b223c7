"""Ctrl-C / SIGTERM in long stages: the first signal asks for a clean stop, the second aborts at once.

A stage wraps its work in `graceful_stop()` and polls `stop_requested()` at a safe point (after an
optimizer step, after a written part, after a song): it then saves what it has and returns
`exit_code()` (130 for SIGINT, 143 for SIGTERM, the shell's 128 + signal convention). A second signal
raises KeyboardInterrupt wherever the code is; every writer in acetune writes to a temp name and
renames, so that abort damages nothing already written.

Module-level state because a signal handler can only reach globals; one stage runs per process.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)
_NAMES = {signal.SIGINT: "Ctrl-C"} | ({signal.SIGTERM: "SIGTERM"} if hasattr(signal, "SIGTERM") else {})
_received: list[int] = []


def _handler(signum, frame) -> None:
    _received.append(signum)
    if len(_received) > 1:  # second signal: abort now (writers are atomic, nothing half-written stays)
        raise KeyboardInterrupt
    print(f"\n{_NAMES.get(signum, signum)} received: finishing the current step, then saving "
          "(press Ctrl-C again to abort at once)", file=sys.stderr, flush=True)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the two-stage handlers for SIGINT and SIGTERM (main thread only; elsewhere a no-op)."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_requested() -> bool:
    return bool(_received)


def signal_name() -> str:
    return _NAMES.get(_received[0], str(_received[0])) if _received else ""


def exit_code() -> int:
    """128 + the first signal's number (130 Ctrl-C, 143 SIGTERM); 130 when none was recorded."""
    return 128 + int(_received[0] if _received else signal.SIGINT)


def command_line(argv: Sequence[str]) -> str:
    """`argv` quoted so the user's shell runs it as is (cmd.exe rules on Windows)."""
    return subprocess.list2cmdline(list(argv)) if os.name == "nt" else shlex.join(argv)
