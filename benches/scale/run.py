#!/usr/bin/env python3
"""The controller at scale (`make bench-scale`): on a local control plane (the e2e harness's,
real API server, etcd, scheduler and controller-manager; no kubelets, no node agents),
`mock-accel-dra fleet` simulates N nodes and one controller (leader election off) publishes
their slices. Per run it measures the time from controller start to every slice published, then
over a steady window the API requests per minute by verb and resource (the API server's
`apiserver_request_total`), the controller's RSS, CPU and reconcile p99 (its own histogram),
and the API server's CPU. Writes a JSON file, the SVG chart and the Markdown tables.

Benchmarks are not tests: this is not part of `make test`, `make e2e` nor CI.

    benches/scale/run.py [--runs 100x6,1000x6,3000x6,100x64] [--steady 300] [--out DIR]

Before and after a change: run once with `--controller-bin` the old build and `--out` a
directory of its own, then with the new build and `--baseline OLD/scale.json`: the SVG draws
the old runs dashed, and scale.md starts with a before → after table. `MOCK_ACCEL_DRA_BIN`
points the harness (and so the fleet) at a build too.

Or in one pass, on the same fleets: `--baseline-bin OLD --baseline-runs 1000x6,3000x6` measures
the old build too at those sizes, after the new one: its slices are deleted and the old build
publishes them again beside the same fleet (no second fleet to create, which takes minutes at
3,000 nodes). Its runs go to OUT/scale-baseline.json and serve as the baseline.
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "e2e"))
sys.path.insert(0, str(HERE))

from harness import cluster as cluster_mod, controlplane, progress  # noqa: E402
from harness.kube import KubectlError  # noqa: E402
from harness.manifests import Workload  # noqa: E402

import report  # noqa: E402

# The fleet's heartbeat and the controller's grace period (4 heartbeats, as 10 s and 40 s by
# default). Set by --heartbeat: at the default 10 s this 2-core machine's API server falls
# behind at 1,000 nodes (see BENCHMARKS.md).
HEARTBEAT_S = 10
# Colour codes of the fleet's text log.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scrape(kubectl, path: str) -> list:
    return report.parse_metrics(kubectl.run("get", "--raw", path, timeout=60))


def controller_metrics(port: int) -> list:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return report.parse_metrics(r.read().decode())


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fleet_max_late(log: Path, since: int) -> float:
    """The largest `max_late` the fleet logged for heartbeat rounds after byte `since`."""
    worst = 0.0
    with log.open() as f:
        f.seek(since)
        for line in f:
            line = _ANSI.sub("", line)
            if "max_late=" not in line:
                continue
            v = line.split("max_late=", 1)[1].split()[0]
            worst = max(worst, _duration_s(v))
    return worst


def _read_from(log: Path, offset: int) -> str:
    if not log.exists():
        return ""
    with log.open() as f:
        f.seek(offset)
        return f.read()


def _duration_s(v: str) -> float:
    for unit, f in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)):
        if v.endswith(unit):
            try:
                return float(v[: -len(unit)]) * f
            except ValueError:
                return 0.0
    return 0.0


class Bench:
    def __init__(self, state: Path, steady: float, publish_timeout: float):
        self.publish_timeout = publish_timeout
        self.c = cluster_mod.Cluster(state, die_with_parent=True)
        self.steady = steady

    def up(self) -> None:
        # No simulated nodes; the two controller replicas `up` starts are stopped again, each run
        # starts its own.
        self.c.up([], with_driver=True)
        for i in list(self.c.info.get("controllers", [])):
            self.c.sup.stop(f"controller-{i}")
        self.c.info["controllers"] = []
        self.c.save()

    def start_controller(self, controller_bin: str | None) -> int:
        wl = Workload.from_json(self.c.info["controller_workload"])
        kubeconfig, _ = self.c._controller_identity(wl)
        args = cluster_mod._without_flag(list(wl.args), "--leader-elect")
        args = cluster_mod._without_flag(args, "--agent-grace-period") + [f"--agent-grace-period={4 * HEARTBEAT_S}s"]
        port = controlplane.free_port()
        self.c.sup.start("bench-controller", [
            controller_bin or str(self.c.binaries.driver), "controller", *args, "--leader-elect=false",
            f"--metrics-addr=127.0.0.1:{port}",
        ], env={**wl.env, "KUBECONFIG": str(kubeconfig)})
        return port

    def fleet(self, *args: str, name: str = "bench-fleet") -> None:
        self.c.sup.start(name, [str(self.c.binaries.driver), "fleet", *args],
                         env={"KUBECONFIG": str(self.c.kubeconfig)})

    def fleet_delete(self) -> None:
        # At 3,000 nodes one delete-collection can outlast the fleet's 10 s read deadline (the
        # API server goes on deleting): run it again until nothing of the fleet is left, or the
        # next run would start beside the last one's nodes and slices.
        deadline = time.monotonic() + 600
        while True:
            self.fleet("--delete", "--prefix=scale-", name="bench-fleet-delete")
            while self.c.sup.get("bench-fleet-delete").alive():
                if time.monotonic() > deadline:
                    raise RuntimeError("fleet --delete did not finish within 10 minutes")
                time.sleep(1)
            left = sum(len(self.c.kubectl.items(kind, selector="mock-accel.example.com/fleet=scale"))
                       for kind in ("mockaccelnodes", "nodes"))
            left += len(self.c.kubectl.items("resourceslices", selector="app.kubernetes.io/managed-by=mock-accel-controller"))
            if left == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} objects of the fleet left 10 minutes after fleet --delete")
            progress.step(f"{left} objects of the fleet left; deleting again")
            time.sleep(5)

    def create_fleet(self, nodes: int, devices: int) -> None:
        progress.step(f"run: {nodes} nodes × {devices} devices")
        log = self.fleet_log()
        # The log of a fleet started again is appended to: read only this run's part.
        log_start = log.stat().st_size if log.exists() else 0
        self.fleet(f"--nodes={nodes}", f"--devices-per-node={devices}", f"--heartbeat={HEARTBEAT_S}s",
                   "--prefix=scale-", "--concurrency=16", "--log-format=text")
        deadline = time.monotonic() + 1800
        while "fleet created" not in _read_from(log, log_start):
            if not self.c.sup.get("bench-fleet").alive():
                raise RuntimeError(f"fleet exited: {self.c.sup.get('bench-fleet').log_tail(10)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the fleet was not created within 30 minutes")
            time.sleep(1)
        progress.step(f"{nodes} nodes created")

    def fleet_log(self) -> Path:
        return self.c.state / "logs" / "bench-fleet.log"

    def clear_slices(self) -> None:
        """Deletes every slice the controller published (with the controller stopped), so that
        another build publishes them again from nothing."""
        selector = "app.kubernetes.io/managed-by=mock-accel-controller"
        deadline = time.monotonic() + 600
        while (left := len(self.c.kubectl.items("resourceslices", selector=selector))) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{left} slices left 10 minutes after deleting them")
            # One delete-collection (`kubectl delete -l` would send a request per slice). At
            # 12,000 slices it outlasts the API server's 60 s request timeout, which answers
            # with an error having deleted part of them: delete the rest again.
            try:
                self.c.kubectl.run("delete", "--raw",
                                   f"/apis/resource.k8s.io/v1/resourceslices?labelSelector={selector}",
                                   timeout=600)
            except KubectlError as e:
                progress.step(f"{left} slices to delete; the delete-collection ended early ({e}); again")

    def stop_fleet(self) -> None:
        self.c.sup.stop("bench-fleet")

    def measure(self, nodes: int, devices: int, controller_bin: str | None) -> dict:
        """Starts a controller (`controller_bin`, or the harness's build) beside the fleet,
        waits until it published every slice, measures the steady window, stops it."""
        progress.step(f"starting the controller {controller_bin or self.c.binaries.driver}")
        load_before = os.getloadavg()[0]
        log = self.fleet_log()
        started = time.monotonic()
        port = self.start_controller(controller_bin)
        pid = self.c.sup.get("bench-controller").pid
        per_node = None
        complete = True
        while True:
            if time.monotonic() - started > self.publish_timeout:
                # Measured as it is: the steady window then shows what keeps the rest waiting.
                complete = False
                progress.warn(f"not every slice published within {self.publish_timeout:.0f}s")
                break
            if not self.c.sup.get("bench-controller").alive():
                raise RuntimeError(f"controller exited: {self.c.sup.get('bench-controller').log_tail(10)}")
            try:
                published = report.value(controller_metrics(port), "mock_accel_controller_slices_published")
            except OSError:
                published = 0
            # A node's slices are written one after the other: count the first node's again
            # whenever the total says every node might be done.
            if published > 0 and (per_node is None or published >= nodes * per_node):
                per_node = len(self.c.kubectl.items("resourceslices", field_selector="spec.nodeName=scale-0000"))
                if per_node and published == nodes * per_node:
                    break
            time.sleep(0.25)
        publish_s = time.monotonic() - started
        # What publishing cost the controller: a reconcile that scans every node's slices makes
        # this grow with N² rather than N.
        publish_cpu_s = proc_cpu_seconds(pid)
        progress.step(f"{int(published)} slices published in {publish_s:.1f}s; settling")

        # Settle: the reconciles the publishing caused, and the fleet back on its schedule.
        time.sleep(min(2 * HEARTBEAT_S, 20))
        log_at = log.stat().st_size
        api_pid = self.c.sup.get("kube-apiserver").pid
        a0, c0 = scrape(self.c.kubectl, "/metrics"), controller_metrics(port)
        cpu0, api0, t0 = proc_cpu_seconds(pid), proc_cpu_seconds(api_pid), time.monotonic()
        progress.step(f"steady window of {self.steady:.0f}s")
        time.sleep(self.steady)
        a1, c1 = scrape(self.c.kubectl, "/metrics"), controller_metrics(port)
        cpu1, api1, t1 = proc_cpu_seconds(pid), proc_cpu_seconds(api_pid), time.monotonic()
        secs = t1 - t0

        reqs = report.per_minute(report.api_requests(a0), report.api_requests(a1), secs)
        total = sum(v for (verb, _), v in reqs.items() if verb != "WATCH")
        slice_writes = sum(v for (verb, res), v in reqs.items()
                           if res.startswith("resourceslices") and verb not in ("GET", "LIST", "WATCH"))
        result = {
            "nodes": nodes,
            "devices_per_node": devices,
            "slices": int(published),
            "publish_s": publish_s,
            "publish_complete": complete,
            "published_fraction": published / (nodes * per_node) if per_node else 0.0,
            "controller_cpu_publish_s": publish_cpu_s,
            "controller_bin": controller_bin or str(self.c.binaries.driver),
            "steady_s": secs,
            "requests_per_min": total,
            "slice_writes_per_min": slice_writes,
            "requests_per_node_per_beat": total / nodes * HEARTBEAT_S / 60,
            "requests_by_verb_resource": {f"{v} {r}": n for (v, r), n in reqs.items()},
            "controller_rss_mib": proc_rss_mib(pid),
            "controller_cpu_pct": (cpu1 - cpu0) / secs * 100,
            "apiserver_cpu_pct": (api1 - api0) / secs * 100,
            "reconcile_p99_s": report.histogram_quantile(
                c0, c1, "mock_accel_controller_reconcile_duration_seconds", 0.99),
            "reconciles_per_min": sum(report.per_minute(
                report.sum_by(c0, "mock_accel_controller_reconciles_total", ("outcome",)),
                report.sum_by(c1, "mock_accel_controller_reconciles_total", ("outcome",)), secs).values()),
            "controller_writes_per_min": report.per_minute(
                report.sum_by(c0, "mock_accel_controller_api_writes_total", ("kind", "verb")),
                report.sum_by(c1, "mock_accel_controller_api_writes_total", ("kind", "verb")), secs),
            "max_late_s": fleet_max_late(log, log_at),
            # The machine is shared: what else ran shows here (1-minute load average).
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
        # The cost of one node's heartbeat, in API requests and CPU of both sides.
        result["apiserver_cpu_ms_per_beat"] = (api1 - api0) * 1000 / (secs / HEARTBEAT_S) / nodes
        result["controller_cpu_ms_per_beat"] = (cpu1 - cpu0) * 1000 / (secs / HEARTBEAT_S) / nodes
        result["controller_writes_per_min"] = {" ".join(k): v for k, v in result["controller_writes_per_min"].items()}
        progress.step(f"{nodes}×{devices}: publish {publish_s:.1f}s, {total:,.0f} req/min, "
                      f"{slice_writes:.0f} slice writes/min, controller {result['controller_rss_mib']:.0f} MiB "
                      f"{result['controller_cpu_pct']:.1f}% CPU, API server {result['apiserver_cpu_pct']:.0f}% CPU")
        self.c.sup.stop("bench-controller")
        return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="100x6,1000x6,3000x6,100x64",
                    help="comma-separated NODESxDEVICES (default 100x6,1000x6,3000x6,100x64)")
    ap.add_argument("--heartbeat", type=int, default=10,
                    help="fleet heartbeat in seconds; the controller's grace period is 4 times it (default 10)")
    ap.add_argument("--publish-timeout", type=float, default=1800,
                    help="give up waiting for every slice after this many seconds and measure anyway (default 1800)")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in OUT/scale.json and add these (a separate pass)")
    ap.add_argument("--steady", type=float, default=300, help="steady window in seconds (default 300)")
    ap.add_argument("--state", default="/tmp/mock-accel-bench-scale", help="cluster state directory")
    ap.add_argument("--controller-bin", default=None,
                    help="run this mock-accel-dra binary as the controller (an A/B of two versions)")
    ap.add_argument("--baseline", default=None,
                    help="scale.json of another build (e.g. before a change): drawn dashed in the SVG, "
                         "and a before → after table added to scale.md")
    ap.add_argument("--baseline-bin", default=None,
                    help="also measure this mock-accel-dra binary as the controller, on the same fleets, "
                         "at the sizes of --baseline-runs (after this build; see above)")
    ap.add_argument("--baseline-runs", default="",
                    help="comma-separated NODESxDEVICES of --runs at which --baseline-bin is measured too")
    ap.add_argument("--out", default=str(HERE.parents[1] / "docs" / "bench"),
                    help="where scale.json, scale.svg and scale.md go (default docs/bench)")
    args = ap.parse_args()
    runs = parse_runs(args.runs)
    baseline_runs = set(parse_runs(args.baseline_runs)) if args.baseline_bin else set()
    global HEARTBEAT_S
    HEARTBEAT_S = args.heartbeat
    progress.set_prefix("bench-scale")
    cluster_mod.install_signal_handlers()
    bench = Bench(Path(args.state), args.steady, args.publish_timeout)
    out = Path(args.out)
    baseline = str(out / "scale-baseline.json") if args.baseline_bin else args.baseline
    results, baseline_results = [], []
    if args.append and (out / "scale.json").is_file():
        results = json.loads((out / "scale.json").read_text())["runs"]
    if args.append and args.baseline_bin and Path(baseline).is_file():
        baseline_results = json.loads(Path(baseline).read_text())["runs"]
    if args.baseline_bin:
        # A baseline file of an earlier pass must not be drawn beside this one's first runs.
        write_runs(Path(baseline), baseline_results, sys.argv[1:])
    try:
        bench.up()
        for i, (nodes, devices) in enumerate(runs):
            bench.create_fleet(nodes, devices)
            results.append(bench.measure(nodes, devices, args.controller_bin))
            # Written at once, before anything else can fail, and before the clean-up, which
            # takes minutes at 3,000 nodes.
            write(out, results, sys.argv[1:], baseline)
            if (nodes, devices) in baseline_runs:
                bench.clear_slices()
                baseline_results.append(bench.measure(nodes, devices, args.baseline_bin))
                write_runs(Path(baseline), baseline_results, sys.argv[1:])
                write(out, results, sys.argv[1:], baseline)
            bench.stop_fleet()
            if i + 1 < len(runs):
                bench.fleet_delete()
    finally:
        bench.c.down()
    write(out, results, sys.argv[1:], baseline)
    print((Path(args.out) / "scale.md").read_text())
    return 0


def parse_runs(runs: str) -> list[tuple[int, int]]:
    """`100x6,1000x6` → [(100, 6), (1000, 6)]."""
    return [tuple(int(x) for x in r.split("x")) for r in runs.split(",") if r]


def write(out: Path, results: list[dict], argv: list[str], baseline: str | None = None) -> None:
    """Writes the results so far: JSON, SVG and Markdown (with `baseline`, a scale.json of
    another build, drawn beside them and compared in a table)."""
    before = json.loads(Path(baseline).read_text())["runs"] if baseline and Path(baseline).is_file() else []
    write_runs(out / "scale.json", results, argv)
    meta = json.loads((out / "scale.json").read_text())["meta"]
    (out / "scale.svg").write_text(report.svg_chart(
        results, f"mock-accel controller at scale (Kubernetes {meta['kubernetes']}, {meta['date']})",
        before, ("this build", "baseline") if before else ("", "")))
    comparison = report.comparison_table(before, results)
    (out / "scale.md").write_text(
        (f"Before → after (baseline {baseline}):\n\n{comparison}\n" if comparison else "")
        + report.markdown_tables([
            {**r, "requests_by_verb_resource": {tuple(k.split(" ", 1)): v
                                                for k, v in r["requests_by_verb_resource"].items()}}
            for r in results]))
    progress.step(f"wrote {out / 'scale.json'}, {out / 'scale.svg'}, {out / 'scale.md'}")


def write_runs(path: Path, results: list[dict], argv: list[str]) -> None:
    """Writes runs as JSON with what produced them (machine, version, command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "kubernetes": os.environ.get("K8S_VERSION", "v1.37.2"),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "command": "make bench-scale" + (f" SCALE_ARGS='{' '.join(argv)}'" if argv else ""),
        "heartbeat_s": HEARTBEAT_S,
    }
    path.write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
