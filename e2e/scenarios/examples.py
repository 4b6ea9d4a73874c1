"""Scenario 11: every YAML file in docs/examples/ is applied and checked against its
`# expect:` line. Scenario 12: every YAML under docs/ and config/ (files, and fenced ```yaml
blocks in the Markdown that hold whole objects) is accepted by the API server in a server-side
dry run, as are the kustomizations config/, kustomize/default, kustomize/local and
kustomize/simulated.

The `# expect:` line (docs/testing-guide.md), exactly one per example:

    # expect: pods-running=1, devices=pf:1,vf:1, same=resource.kubernetes.io/numaNode

Pairs are `key=value`, separated by a comma and a space; `devices` entries by a comma alone.
- `pods-running=N` (required): the file has N pods and all reach Running (scheduled, allocated,
  prepared by the driver, their claim-using containers got MOCK_ACCEL_* env);
- `devices=pf:N,vf:M` (required): every ResourceClaim the pods use (direct or from a template)
  is allocated exactly N PFs and M VFs (by `mock-accel.example.com/deviceType`; absent = 0);
  `devices=any:N`: exactly N devices, of either type (for claims whose PF/VF mix depends on
  whether the cluster serves shared counters);
- `value=<attribute>:<value>` (optional, repeatable): every device of each claim has this value
  of the attribute (`resource.kubernetes.io/numaNode:1`);
- `device-status=<condition>` (optional): the node agent reports every allocated device in the
  claim's `status.devices[]` with this condition `True` and the device's uuid in `data`;
- `same=<attribute>` (optional, repeatable): within each claim all devices share its value;
- `distinct=<attribute>` (optional, repeatable): within each claim all values differ;
- `avoids=<device>` (optional, repeatable): no claim is allocated a device of that DRA name;
- `fault-hits=N` (optional): the injected faults of the example's MockAccelNode were hit N
  times in all (`status.faults[].hits`);
- `node-label=<key>=<value>` (optional): the example needs nodes with this label (the
  `pf-sharing` label of shared PFs, the `attachment` label of devices that wait for
  attachment); the suite labels every node while the example runs;
- `min-kubernetes=<minor>` (optional): on an older control plane the example is skipped, with
  the reason printed (it uses a feature that version does not serve by default).
After the pods are deleted, every claim is unprepared (register 0, CDI spec gone).

A fixture example programs a node instead (a `MockAccelNode` with fixture fields in its spec):

    # expect: fixture=node1, devices=pf:2,vf:2

It is applied server-side; then the node must publish exactly N PFs and M VFs within
FIXTURE_TIMEOUT seconds. Afterwards the fixture fields are removed again (the suite's field
manager gives them up) and the node is back at the canonical 6 devices.

An example may also hold (docs/integration-guide.md, "Testing with the fixture") a
`MockAccelNode` with fixture fields in its `spec`. It is applied first, and the rest only once
the node took it in (every declared non-Healthy device tainted in its slice, every fault entry
listed in `status.faults`); afterwards the node's fixture fields are restored.

A YAML under docs/ that is deliberately invalid (showing a wrong shape) carries the line
`# expect: rejected`; scenario 12 then checks that the API server refuses it. Examples carry no
`metadata.namespace`: the suite applies each into its own namespace.
"""

import json
import re
import time
from pathlib import Path

from harness import controlplane, kube
from harness.builds import REPO
from harness.kube import KubectlError
from harness.wait import Failure, check, equal, until

from scenarios.framework import Context, say, scenario, sysfs_name, verify_released, wait_prepared

EXAMPLES = REPO / "docs" / "examples"
_EXPECT = re.compile(r"^\s*#\s*expect\s*:\s*(.+?)\s*$", re.M)


def expectation_lines(text: str) -> list[str]:
    return _EXPECT.findall(text)


def parse_expect(line: str) -> dict:
    """`pods-running=1, devices=pf:1,vf:1, same=A` → {"pods": 1, "devices": {"pf": 1, "vf": 1},
    "same": [A], "distinct": []}."""
    out: dict = {"pods": None, "devices": None, "same": [], "distinct": [], "avoids": [], "fault-hits": None,
                 "node_label": None, "min_kubernetes": None, "value": [], "device_status": None}
    for pair in line.split(", "):
        key, sep, value = pair.strip().partition("=")
        if not sep:
            raise Failure(f"'# expect:' pair {pair!r} is not key=value")
        if key == "pods-running":
            out["pods"] = int(value)
        elif key == "devices":
            counts = {}
            for entry in value.split(","):
                t, _, n = entry.partition(":")
                if t not in ("pf", "vf", "any") or not n.isdigit():
                    raise Failure(f"'# expect:' devices entry {entry!r} is not pf:N, vf:N or any:N")
                counts[t] = int(n)
            if "any" in counts and len(counts) > 1:
                raise Failure(f"'# expect:' devices={value!r}: any:N stands alone")
            out["devices"] = ({"any": counts["any"]} if "any" in counts
                              else {"pf": counts.get("pf", 0), "vf": counts.get("vf", 0)})
        elif key in ("same", "distinct", "avoids"):
            out[key].append(value)
        elif key == "value":
            attribute, colon, wanted = value.partition(":")
            if not colon or not attribute or not wanted:
                raise Failure(f"'# expect:' value={value!r} is not <attribute>:<value>")
            out["value"].append((attribute, wanted))
        elif key == "device-status":
            out["device_status"] = value
        elif key == "fault-hits":
            out[key] = int(value)
        elif key == "node-label":
            out["node_label"] = value
        elif key == "min-kubernetes":
            out["min_kubernetes"] = tuple(int(x) for x in value.split("."))
        else:
            raise Failure(f"'# expect:' has an unknown key {key!r}")
    if out["pods"] is None or out["devices"] is None:
        raise Failure(f"'# expect:' needs pods-running= and devices= ({line!r})")
    return out


# A fixture example's devices must be published this fast.
FIXTURE_TIMEOUT = 15
FIXTURE_MANAGER = "e2e-fixture-example"


def run_fixture_example(ctx: Context, path: Path, line: str) -> str:
    """Applies a MockAccelNode spec and waits for the node's published device counts."""
    pairs = dict(p.strip().partition("=")[::2] for p in line.split(", "))
    node = pairs.get("fixture", "")
    want = parse_expect(f"pods-running=0, devices={pairs.get('devices', '')}")["devices"]
    objs = kube.parse_objects(ctx.k.run("create", "--dry-run=client", "-o", "json", "-f", str(path)))
    check([(o["kind"], o["metadata"]["name"]) for o in objs] == [("MockAccelNode", node)],
          f"{path.name}: a fixture example holds exactly the MockAccelNode {node}", objs)

    def published():
        counts = {"pf": 0, "vf": 0}
        for d in ctx.slice_devices().values():
            if d["node"] == node:
                t = kube.attr(d, "deviceType")
                counts[t] = counts.get(t, 0) + 1
        return counts == want, counts
    start = time.monotonic()
    ctx.k.run("apply", "--server-side", f"--field-manager={FIXTURE_MANAGER}", "-f", str(path))
    try:
        until(f"{path.name}: {node} to publish {want}", published, FIXTURE_TIMEOUT, 0.2)
        took = time.monotonic() - start
    finally:
        # Applying only nodeName gives up every fixture field this manager set.
        ctx.k.run("apply", "--server-side", f"--field-manager={FIXTURE_MANAGER}", "-f", "-",
                  input=json.dumps({"apiVersion": objs[0]["apiVersion"], "kind": "MockAccelNode",
                                    "metadata": {"name": node}, "spec": {"nodeName": node}}))
    until(f"{path.name}: {node} back to the canonical devices",
          lambda: ((c := published()[1]) == {"pf": 2, "vf": 4}, c), FIXTURE_TIMEOUT, 0.2)
    return f"{node} published {want} {took:.1f}s after the apply; fixture fields removed again"


def run_example(ctx: Context, path: Path) -> str:
    lines = expectation_lines(path.read_text())
    check(len(lines) == 1, f"{path.name}: needs exactly one '# expect:' line", lines)
    if lines[0].startswith("fixture="):
        return run_fixture_example(ctx, path, lines[0])
    exp = parse_expect(lines[0])
    minor = controlplane.kube_minor(ctx.cluster.binaries)
    if exp["min_kubernetes"] and tuple(int(x) for x in minor.split(".")) < exp["min_kubernetes"]:
        return f"skipped: needs Kubernetes {'.'.join(map(str, exp['min_kubernetes']))}, this is {minor}"
    labelled = ctx.cluster.node_names() if exp["node_label"] else []
    for node in labelled:
        ctx.k.run("label", "node", node, exp["node_label"], "--overwrite")
    try:
        return apply_and_check(ctx, path, exp)
    finally:
        for node in labelled:
            ctx.k.run("label", "node", node, exp["node_label"].split("=", 1)[0] + "-")


def apply_and_check(ctx: Context, path: Path, exp: dict) -> str:
    fixtures = [o for o in kube.parse_objects(ctx.k.run("apply", "--dry-run=client", "-f", str(path), "-o", "json"))
                if o["kind"] == "MockAccelNode"]
    saved = {f["metadata"]["name"]: ctx.k.get("mockaccelnode", f["metadata"]["name"])["spec"] for f in fixtures}
    for f in fixtures:
        ctx.k.apply(f)
        wait_fixture_applied(ctx, f)
    try:
        planned = kube.parse_objects(ctx.k.run("apply", "-n", ctx.ns, "--dry-run=server", "-f", str(path), "-o", "json"))
        # Cluster-scoped objects the example creates are deleted afterwards; ones that already
        # existed (say, a shipped DeviceClass it repeats) are left alone.
        cluster_scoped = [(o["kind"], o["metadata"]["name"]) for o in planned if not o["metadata"].get("namespace")
                          and ctx.k.get_or_none(o["kind"], o["metadata"]["name"]) is None]
        objs = kube.parse_objects(ctx.k.run("apply", "-n", ctx.ns, "-f", str(path), "-o", "json"))
    except KubectlError as e:
        raise Failure(f"{path.name}: not accepted by the API server: {e.stderr}") from None
    pods = [o["metadata"]["name"] for o in objs if o["kind"] == "Pod"]
    try:
        equal(len(pods), exp["pods"], f"{path.name}: pods in the file (pods-running)")
        claims: dict[str, tuple[str, dict, list[dict]]] = {}
        for name in pods:
            p = ctx.wait_running(name)
            node = p["spec"]["nodeName"]
            for pc in p["spec"].get("resourceClaims") or []:
                c = ctx.pod_claim(p, pc["name"])
                uid = c["metadata"]["uid"]
                if uid in claims:
                    continue
                devs = ctx.allocated(c)
                check_claim(path, c, devs, exp)
                for d in devs:
                    equal(ctx.register(node, sysfs_name(d)), 1, f"{path.name}: register of {node}/{sysfs_name(d)}")
                wait_prepared(ctx, node, uid)
                if exp["device_status"]:
                    check_device_status(ctx, path, c, devs, exp["device_status"])
                claims[uid] = (node, c, devs)
            for ctr in p["spec"]["containers"]:
                if (ctr.get("resources") or {}).get("claims"):
                    env = ctx.env(node, name, ctr["name"])
                    check("MOCK_ACCEL_UUID" in env, f"{path.name}: container {name}/{ctr['name']} got no MOCK_ACCEL_UUID", env)
        check(bool(claims), f"{path.name}: its pods use no ResourceClaim")
        if exp["fault-hits"] is not None:
            hits = sum(h["hits"] for f in fixtures
                       for h in (ctx.mock_node(f["metadata"]["name"]).get("status") or {}).get("faults") or [])
            equal(hits, exp["fault-hits"], f"{path.name}: hits of the injected faults")
        for name in pods:
            ctx.delete_pod_and_wait(name)
        for node, c, devs in claims.values():
            verify_released(ctx, node, c["metadata"]["uid"], devs)
        return f"{len(pods)} pods ran with {sum(len(d) for _, _, d in claims.values())} devices, all released"
    finally:
        for kind, name in cluster_scoped:
            ctx.k.delete(kind, name)
        for name, spec in saved.items():
            restore_fixture(ctx, name, spec)


FIXTURE_FIELDS = ("simulation", "sriov", "health", "faults")


def wait_fixture_applied(ctx: Context, fixture: dict) -> None:
    """Waits until the node agent and the controller acted on `fixture`'s spec."""
    node, spec = fixture["metadata"]["name"], fixture["spec"]
    tainted = {h["device"] for h in spec.get("health") or [] if h["state"] != "Healthy"}

    def probe():
        faults = (ctx.mock_node(node).get("status") or {}).get("faults") or []
        have = {name for (_, name), d in ctx.slice_devices().items() if d["node"] == node and d.get("taints")}
        return len(faults) == len(spec.get("faults") or []) and tainted <= have, \
            {"faults": faults, "tainted": sorted(have)}
    until(f"{node} to act on the example's spec", probe, 10, 0.2)


def restore_fixture(ctx: Context, node: str, spec: dict) -> None:
    patch = {k: spec.get(k) for k in FIXTURE_FIELDS}
    ctx.k.run("patch", "mockaccelnode", node, "--type=merge", "-p", json.dumps({"spec": patch}))
    until(f"{node}'s fixture fields restored", lambda: (
        all((n := ctx.mock_node(node))["spec"].get(k) == spec.get(k) for k in FIXTURE_FIELDS)
        and len((n.get("status") or {}).get("faults") or []) == len(spec.get("faults") or []), n["spec"]), 10, 0.2)
    if not any(h["state"] != "Healthy" for h in spec.get("health") or []):
        until(f"{node}'s device taints removed", lambda: (
            not (t := [name for (_, name), d in ctx.slice_devices().items() if d["node"] == node and d.get("taints")]),
            t), 10, 0.2)


def check_claim(path: Path, c: dict, devs: list[dict], exp: dict) -> None:
    name = c["metadata"]["name"]
    counts = {"pf": 0, "vf": 0}
    for d in devs:
        t = kube.attr(d, "deviceType")
        counts[t] = counts.get(t, 0) + 1
    if "any" in exp["devices"]:
        equal(len(devs), exp["devices"]["any"], f"{path.name}: devices allocated to claim {name} ({counts})")
    else:
        equal(counts, exp["devices"], f"{path.name}: device types allocated to claim {name}")
    for a, wanted in exp["value"]:
        values = [json.dumps(kube.attr(d, a)) for d in devs]
        check(all(str(kube.attr(d, a)) == wanted for d in devs),
              f"{path.name}: claim {name}'s devices do not all have {a} {wanted}", values)
    for a in exp["same"]:
        values = {json.dumps(kube.attr(d, a)) for d in devs}
        check(len(values) == 1 and "null" not in values, f"{path.name}: claim {name}'s devices differ in {a}", values)
    for a in exp["avoids"]:
        check(all(d["name"] != a for d in devs), f"{path.name}: claim {name} was allocated {a}", devs)
    for a in exp["distinct"]:
        values = [json.dumps(kube.attr(d, a)) for d in devs]
        check(len(set(values)) == len(values) and "null" not in values,
              f"{path.name}: claim {name}'s devices share values of {a}", values)


def check_device_status(ctx: Context, path: Path, c: dict, devs: list[dict], condition: str) -> None:
    """Every allocated device has a `status.devices[]` entry with `condition` True and its uuid."""
    name = c["metadata"]["name"]

    def missing():
        entries = {(e["pool"], e["device"]): e
                   for e in (ctx.claim(name).get("status") or {}).get("devices") or [] if e.get("driver") == kube.DRIVER}
        lacking = [d["name"] for d in devs
                   if not (e := entries.get((d["pool"], d["name"])))
                   or not any(x["type"] == condition and x["status"] == "True" for x in e.get("conditions") or [])
                   or (e.get("data") or {}).get("uuid") != kube.attr(d, "uuid")]
        return not lacking, {"lacking": lacking, "entries": list(entries.values())}
    until(f"{path.name}: claim {name}'s status.devices to report {condition} for every device", missing, 20)


@scenario("11", "docs/examples: every example applied, its declared outcome checked", cost=150)
def examples(ctx: Context) -> None:
    files = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))
    check(bool(files), f"no examples in {EXAMPLES}")
    failures = []
    for f in files:
        # A namespace per example: examples may reuse object names, and claims are immutable.
        slug = re.sub(r"[^a-z0-9]+", "-", f.stem.lower()).strip("-")
        ns = f"{ctx.ns[:30]}-{slug}"[:63].rstrip("-")
        ctx.k.apply(kube.namespace(ns))
        sub = Context(ctx.cluster, ns, ctx.artifacts / f.stem)
        try:
            say(f"{f.name}: {run_example(sub, f)}")
        except (Failure, KubectlError) as e:
            failures.append(f"{f.name}: {e}")
            for name, args in (("objects.yaml", ["get", "pods,resourceclaims", "-n", ns, "-o", "yaml"]),
                               ("events.txt", ["get", "events", "-n", ns])):
                sub.save(name, ctx.k.try_run(*args)[1])
            say(f"{f.name}: FAILED (its objects and events: {sub.artifacts})")
        code, _, err = ctx.k.try_run("delete", "namespace", ns, "--wait=true", "--timeout=90s", timeout=100)
        if code != 0:
            failures.append(f"{f.name}: namespace {ns} not deleted: {err.strip()}")
    check(not failures, f"{len(failures)} of {len(files)} examples failed:\n" + "\n".join(failures))


def yaml_documents() -> list[tuple[str, str]]:
    """(label, YAML text) for every YAML file under docs/ and config/ (not kustomizations) and
    every fenced yaml block in docs/ Markdown and README.md that holds a whole object, except
    blocks marked `# output` (objects as a cluster printed them)."""
    out = []
    for root in (REPO / "docs", REPO / "config"):
        for f in sorted(list(root.rglob("*.yaml")) + list(root.rglob("*.yml"))):
            if f.name != "kustomization.yaml":
                out.append((str(f.relative_to(REPO)), f.read_text()))
    md = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
    fence = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.S | re.M)
    for f in md:
        if not f.is_file():
            continue
        text = f.read_text()
        for i, m in enumerate(fence.finditer(text), start=1):
            block = m.group(1)
            # A block that starts with `# output` shows what the cluster reports (with another
            # cluster's owner UIDs); it is parsed by tests/docs.rs but not applied.
            if block.startswith("# output"):
                continue
            if re.search(r"^apiVersion:", block, re.M) and re.search(r"^kind:", block, re.M):
                line = text[: m.start()].count("\n") + 1
                out.append((f"{f.relative_to(REPO)}:{line} (yaml block {i})", block))
    return out


@scenario("12", "docs/ and config/: every YAML accepted by the API server (server-side dry run)", cost=15)
def dry_run(ctx: Context) -> None:
    docs = yaml_documents()
    check(bool(docs), "no YAML found under docs/ and config/")
    failures, rejected_ok = [], 0
    for label, text in docs:
        want_rejected = "rejected" in expectation_lines(text)
        code, _, err = ctx.k.try_run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                                     "--field-manager=e2e-dry-run", "-f", "-", input=text)
        if want_rejected:
            if code == 0:
                failures.append(f"{label}: marked '# expect: rejected' but the API server accepted it")
            else:
                rejected_ok += 1
        elif code != 0:
            failures.append(f"{label}: {err.strip()}")
    for kdir in ("config", "kustomize/default", "kustomize/local", "kustomize/simulated"):
        if (REPO / kdir / "kustomization.yaml").is_file():
            code, _, err = ctx.k.try_run("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                                         "--field-manager=e2e-dry-run", "-k", str(REPO / kdir), timeout=120)
            if code != 0:
                failures.append(f"{kdir} (kustomization): {err.strip()}")
    say(f"{len(docs)} YAML documents checked ({rejected_ok} deliberately invalid, rejected as marked)")
    check(not failures, f"{len(failures)} YAML documents were not accepted:\n" + "\n".join(failures))
