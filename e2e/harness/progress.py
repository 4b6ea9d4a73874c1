"""Progress lines on stdout: one line per step, time-stamped, flushed at once so that `make`
and CI logs show where a slow start-up is. Each line is written whole under a lock, so lines
printed by several threads (a build's stdout and stderr readers) never interleave."""

import sys
import threading
import time

_PREFIX = "harness"
_LOCK = threading.Lock()


def set_prefix(prefix: str) -> None:
    global _PREFIX
    _PREFIX = prefix


def _write(line: str) -> None:
    with _LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def step(message: str) -> None:
    _write(f"[{_PREFIX} {time.strftime('%H:%M:%S')}] {message}")


def detail(message: str) -> None:
    """A secondary line (for example a build's own output), indented under the last step."""
    _write(f"    {message}")


def warn(message: str) -> None:
    _write(f"[{_PREFIX} {time.strftime('%H:%M:%S')}] WARNING: {message}")


def plain(text: str) -> None:
    """Text as it is (several lines allowed), written whole: the demo's commands and output."""
    _write(text)
