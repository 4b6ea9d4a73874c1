"""`make e2e` on several clusters side by side (`run.py --jobs N`).

Most of a scenario's time is waiting (an outage held for a minute, a grace period, a scheduler
backing off), not CPU, so N independent clusters, each with its own control plane, nodes and
driver in its own state directory and ports, finish the suite in about 1/N of the time.
Scenarios are split by their estimated cost (`@scenario(..., cost=)`, seconds) with the
longest-first rule, and each share keeps the suite's order.

The parent builds the binaries once and hands them to every shard through `K8S_BIN_DIR`,
`FAKELET_BIN` and `MOCK_ACCEL_DRA_BIN`, so shards never build concurrently. Each shard is a
`run.py --ids ...` child in `<state>/shard-<i>`; its output is printed a whole scenario at a time
(from `--- [id]` to its PASS or FAIL line) so that blocks of two shards never interleave, and
every other line at once, prefixed with the shard.
"""

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness import builds, procs, progress

RESULT = re.compile(r"^(PASS|FAIL) (\[[^\]]+\] .*?)(?: \(\d+(?:\.\d+)?s\))?$")


def partition(items: Sequence[tuple[str, float]], n: int) -> list[list[str]]:
    """Splits (id, cost) pairs into at most `n` non-empty groups of nearly equal total cost
    (longest first, each to the least loaded group); each group keeps the input order."""
    n = min(n, len(items))
    loads = [0.0] * n
    owner: dict[str, int] = {}
    for ident, cost in sorted(items, key=lambda ic: -ic[1]):
        i = min(range(n), key=lambda g: (loads[g], g))
        loads[i] += cost
        owner[ident] = i
    return [[ident for ident, _ in items if owner[ident] == g] for g in range(n)]


@dataclass
class Shard:
    index: int
    ids: list[str]
    state: Path
    popen: subprocess.Popen | None = None
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    start_failed: bool = False


class _Printer:
    """Writes a shard's lines: a scenario's block whole, everything else at once."""

    def __init__(self):
        self.lock = threading.Lock()

    def block(self, lines: list[str]) -> None:
        with self.lock:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()


def _pump(shard: Shard, printer: _Printer) -> None:
    tag = f"[shard {shard.index}]"
    block: list[str] = []
    failed_block = False  # the block's FAIL line was seen; its indented reason lines follow
    assert shard.popen is not None and shard.popen.stdout is not None
    for raw in shard.popen.stdout:
        line = raw.rstrip("\n")
        if line.startswith("--- ") or (failed_block and not line.startswith(" ")):
            if block:
                printer.block(block)
            block, failed_block = [], False
            if line.startswith("--- "):
                block = [f"{line}  {tag}"]
                continue
        if block:
            block.append(line)
            m = RESULT.match(line)
            if m and m.group(1) == "PASS":
                shard.passed.append(m.group(2))
                printer.block(block)
                block = []
            elif m:
                shard.failed.append(m.group(2))
                failed_block = True
            continue
        if line.startswith("FAIL cluster start-up"):
            shard.start_failed = True
        printer.block([f"{tag} {line}"])
    if block:
        printer.block(block)


def run(selected_ids: list[tuple[str, float]], jobs: int, state: Path, run_py: Path, keep: bool,
        labels: dict[str, str]) -> tuple[list[str], list[str]]:
    """Runs the scenarios on `jobs` clusters; returns the (passed, failed) labels."""
    binaries = builds.all_binaries(need_nodes=True)
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["K8S_BIN_DIR"] = str(binaries.k8s)
    if binaries.fakelet:
        env["FAKELET_BIN"] = str(binaries.fakelet)
    if binaries.driver:
        # One copy for every shard: a rebuild in the target directory meanwhile changes nothing.
        own = builds.copy_driver(binaries.driver, state / "bin")
        env["MOCK_ACCEL_DRA_BIN"] = str(own)
    env["PYTHONUNBUFFERED"] = "1"

    groups = partition(selected_ids, jobs)
    shards = [Shard(i + 1, ids, state / f"shard-{i + 1}") for i, ids in enumerate(groups)]
    printer = _Printer()
    for s in shards:
        progress.step(f"shard {s.index}: {len(s.ids)} scenarios on a cluster of its own ({' '.join(s.ids)})")
        argv = [sys.executable, str(run_py), "--jobs", "1", "--state", str(s.state), "--ids", ",".join(s.ids)]
        if keep:
            argv.append("--keep")
        s.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   preexec_fn=procs.die_with_parent)
    pumps = [threading.Thread(target=_pump, args=(s, printer), daemon=True) for s in shards]
    for t in pumps:
        t.start()
    try:
        for s in shards:
            assert s.popen is not None
            s.popen.wait()
    except KeyboardInterrupt:
        # Each shard stops its own cluster on SIGTERM (install_signal_handlers).
        for s in shards:
            if s.popen is not None and s.popen.poll() is None:
                s.popen.send_signal(signal.SIGTERM)
        for s in shards:
            if s.popen is not None:
                try:
                    s.popen.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    s.popen.kill()
        raise
    finally:
        for t in pumps:
            t.join(timeout=10)

    passed = [label for s in shards for label in s.passed]
    failed = [label for s in shards for label in s.failed]
    for s in shards:
        if s.start_failed:
            failed.append(f"cluster start-up (shard {s.index})")
        reported = set(s.passed) | set(s.failed)
        # A shard that died without a verdict for some of its scenarios fails them.
        missing = [labels[i] for i in s.ids if labels[i] not in reported]
        if missing and not s.start_failed:
            failed.extend(f"{m} (shard {s.index} exited {s.popen.returncode if s.popen else '?'} without a "
                          f"result)" for m in missing)
    return passed, failed
