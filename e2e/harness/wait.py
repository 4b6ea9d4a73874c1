"""Bounded waiting and readable assertions.

`until` polls a probe until it reports success or a deadline passes; the probe returns
`(done, seen)`, and on timeout the failure message carries the last `seen`, so a red run says
what the cluster looked like instead of only "timed out".
"""

import json
import time
from typing import Any, Callable


class Failure(AssertionError):
    """A scenario's expectation did not hold. The message is what a reader needs."""


def show(value: Any, limit: int = 1500) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, indent=None, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def until(what: str, probe: Callable[[], tuple[bool, Any]], timeout: float, interval: float = 0.5) -> Any:
    """Polls `probe` until it returns `(True, seen)`; returns that `seen`.

    Exceptions raised by the probe count as "not yet" (the last one is reported on timeout):
    a just-created object may not be visible, a socket may not be bound yet.
    """
    deadline = time.monotonic() + timeout
    seen: Any = "(probe never returned)"
    while True:
        try:
            done, seen = probe()
            if done:
                return seen
        except Failure:
            raise
        except Exception as e:  # noqa: BLE001 - reported on timeout
            seen = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {show(seen)}")
        time.sleep(interval)


def stays(what: str, probe: Callable[[], tuple[bool, Any]], duration: float, interval: float = 0.5) -> Any:
    """Checks that `probe` keeps returning `(True, seen)` for `duration` seconds."""
    deadline = time.monotonic() + duration
    seen: Any = None
    while time.monotonic() < deadline:
        ok, seen = probe()
        if not ok:
            raise Failure(f"expected {what} to hold for {duration:.0f}s, but it stopped holding: {show(seen)}")
        time.sleep(interval)
    return seen


def check(condition: bool, message: str, seen: Any = None) -> None:
    if not condition:
        raise Failure(message if seen is None else f"{message}; seen: {show(seen)}")


def equal(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise Failure(f"{what}: expected {show(expected, 600)}, got {show(actual, 600)}")
