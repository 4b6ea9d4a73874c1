"""Progress lines on stdout: one line per step, time-stamped, flushed at once so that `make`
and CI logs show where a slow start-up is."""

import sys
import time

_PREFIX = "harness"


def set_prefix(prefix: str) -> None:
    global _PREFIX
    _PREFIX = prefix


def step(message: str) -> None:
    print(f"[{_PREFIX} {time.strftime('%H:%M:%S')}] {message}", flush=True)


def detail(message: str) -> None:
    """A secondary line (for example a build's own output), indented under the last step."""
    print(f"    {message}", flush=True)


def warn(message: str) -> None:
    print(f"[{_PREFIX} {time.strftime('%H:%M:%S')}] WARNING: {message}", file=sys.stdout, flush=True)
