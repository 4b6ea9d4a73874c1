"""Tests of the harness's own logic that need no cluster:
`python3 -m unittest discover -s e2e -p 'test_*.py'`."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import builds, kube, manifests, nodes, pki, procs, shards, wait  # noqa: E402
from scenarios import examples  # noqa: E402
from scenarios.discovery import uuid_of  # noqa: E402


class ControlPlaneFaultTest(unittest.TestCase):
    """stop_component / start_component (and heal after a failed fault scenario) restart a
    process in place, with its recorded command line."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.state = Path(self.tmp.name)

    def tearDown(self):
        procs.Supervisor(self.state, die_with_parent=True).stop_all(timeout=2)
        self.tmp.cleanup()

    def test_a_killed_component_comes_back_with_the_same_command_line(self):
        from harness.cluster import Cluster
        c = Cluster(self.state, die_with_parent=True)
        c.info = {"ports": {}, "nodes": {}, "controllers": []}
        argv = ["sleep", "61"]
        first = c.sup.start("kube-scheduler", argv)
        c.stop_component("kube-scheduler", signal.SIGKILL)
        first.popen.wait(timeout=5)
        self.assertEqual(c.sup.running(), [])
        self.assertEqual(c.crashed(), [], "a stopped component is not a crash")
        self.assertEqual(Cluster(self.state).info["stopped_components"], {"kube-scheduler": argv})
        self.assertEqual(c.heal(), ["kube-scheduler"])
        again = c.sup.get("kube-scheduler")
        self.assertTrue(again.alive())
        self.assertEqual(again.argv, argv)
        self.assertNotEqual(again.pid, first.pid)
        self.assertEqual(c.info["stopped_components"], {})

    def test_the_scheduler_gets_the_binding_timeout_only_where_it_is_accepted(self):
        from harness import controlplane
        kubeconfig = Path("/state dir/kubeconfig")
        for minor, timeout in [("1.34", None), ("1.35", 15), ("1.36", 15), ("1.37", 15)]:
            self.assertEqual(controlplane.binding_timeout(minor), timeout, minor)
            config = controlplane.scheduler_config(minor, kubeconfig)
            self.assertIn('kubeconfig: "/state dir/kubeconfig"', config)
            self.assertIn("leaderElect: false", config)
            self.assertEqual("bindingTimeout: 15s" in config, timeout is not None, config)

    def test_the_etcd_key_range_covers_exactly_the_prefix(self):
        from harness import controlplane
        self.assertEqual(controlplane.prefix_range("/registry/a/"), (b"/registry/a/", b"/registry/a0"))


class SupervisorTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.state = Path(self.tmp.name)

    def tearDown(self):
        procs.Supervisor(self.state, die_with_parent=True).stop_all(timeout=2)
        self.tmp.cleanup()

    def test_start_stop_in_reverse_order_from_another_supervisor(self):
        sup = procs.Supervisor(self.state, die_with_parent=False)
        a = sup.start("first", ["sleep", "60"])
        b = sup.start("second", ["sleep", "60"])
        self.assertTrue(a.alive() and b.alive())
        # A second invocation (as `cluster.py down`) finds them by pid file.
        later = procs.Supervisor(self.state, die_with_parent=False)
        self.assertEqual([p.name for p in later.running()], ["first", "second"])
        self.assertEqual(later.stop_all(timeout=2), ["second", "first"])
        for p in (a, b):
            p.popen.wait(timeout=5)
        self.assertFalse(list((self.state / "pids").glob("*.json")))

    def test_children_of_a_process_are_stopped_with_it(self):
        sup = procs.Supervisor(self.state, die_with_parent=True)
        p = sup.start("shell", ["bash", "-c", "sleep 60 & echo $! > child; wait"], cwd=self.state)
        child_file = self.state / "child"
        deadline = time.monotonic() + 5
        # The shell creates the file before `echo` writes to it: wait for the whole line.
        while not (child_file.exists() and child_file.read_text().endswith("\n")) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(child_file.read_text())
        child_file.unlink()
        sup.stop("shell", timeout=2)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(procs.pid_runs(child, ["sleep"]))
        self.assertFalse(p.alive())

    def test_a_recycled_pid_is_not_taken_for_ours(self):
        self.assertFalse(procs.pid_runs(os.getpid(), ["definitely-not-python"]))
        self.assertTrue(procs.pid_runs(os.getpid(), [sys.executable]))

    def test_term_ignored_leads_to_kill(self):
        sup = procs.Supervisor(self.state, die_with_parent=True)
        p = sup.start("stubborn", ["bash", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"])
        time.sleep(0.2)
        sup.stop("stubborn", timeout=0.5)
        self.assertFalse(p.alive())

    def test_crash_shows_as_dead(self):
        sup = procs.Supervisor(self.state, die_with_parent=True)
        sup.start("crasher", ["bash", "-c", "echo boom; exit 3"])
        deadline = time.monotonic() + 5
        while sup.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        dead = sup.dead()
        self.assertEqual([p.name for p in dead], ["crasher"])
        self.assertIn("boom", dead[0].log_tail())


class PkiTest(unittest.TestCase):
    def test_certificates_chain_and_carry_the_right_names(self):
        with tempfile.TemporaryDirectory() as d:
            p = pki.create(Path(d))
            verify = subprocess.run(["openssl", "verify", "-CAfile", str(p.serving_ca), str(p.serving_cert)],
                                    capture_output=True, text=True)
            self.assertEqual(verify.returncode, 0, verify.stderr)
            san = subprocess.run(["openssl", "x509", "-in", str(p.serving_cert), "-noout", "-ext", "subjectAltName"],
                                 capture_output=True, text=True).stdout
            self.assertIn("IP Address:127.0.0.1", san)
            self.assertIn("DNS:localhost", san)
            subj = subprocess.run(["openssl", "x509", "-in", str(p.admin_cert), "-noout", "-subject"],
                                  capture_output=True, text=True).stdout
            self.assertIn("O = system:masters", subj)
            pki.write_token_kubeconfig(p, "https://127.0.0.1:1", "sa", "tok", Path(d) / "kc")
            text = (Path(d) / "kc").read_text()
            self.assertIn("token: tok", text)
            self.assertIn("server: https://127.0.0.1:1", text)


class ParsingTest(unittest.TestCase):
    def test_local_flags_are_replaced_whatever_their_form(self):
        args = ["--metrics-addr=0.0.0.0:8081", "--resync-interval", "30s", "--sysfs-root", "/host/sys",
                "--cdi-dir=/var/run/cdi", "--heartbeat-interval=10s"]
        self.assertEqual(manifests.strip_local_flags(args), ["--resync-interval", "30s", "--heartbeat-interval=10s"])

    def test_workload_takes_args_after_the_role(self):
        ds = {"kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "mock-device"},
              "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {
                  "serviceAccountName": "mock-accel-node-agent",
                  "containers": [{"name": "agent", "command": ["mock-accel-dra"],
                                  "args": ["--log-format=json", "node-agent", "--node-name=$(NODE_NAME)",
                                           "--resync-interval=20s"],
                                  "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {}}},
                                          {"name": "LOG_LEVEL", "value": "debug"},
                                          {"name": "CDI_DIR", "value": "/var/run/cdi"}]}]}}}}
        wl = manifests._workload(ds, "node-agent")
        self.assertEqual(wl.args, ["--resync-interval=20s"])
        self.assertEqual(wl.env, {"LOG_LEVEL": "debug"})
        self.assertEqual(wl.service_account, "mock-accel-node-agent")

    def test_example_expectations(self):
        text = "# NUMA locality\n# expect: pods-running=1, devices=pf:1,vf:1, same=resource.kubernetes.io/numaNode\n"
        self.assertEqual(examples.expectation_lines(text),
                         ["pods-running=1, devices=pf:1,vf:1, same=resource.kubernetes.io/numaNode"])
        self.assertEqual(examples.parse_expect(examples.expectation_lines(text)[0]),
                         {"pods": 1, "devices": {"pf": 1, "vf": 1},
                          "same": ["resource.kubernetes.io/numaNode"], "distinct": [], "avoids": [],
                          "fault-hits": None, "node_label": None, "min_kubernetes": None, "value": [],
                          "device_status": None})
        fixture = examples.parse_expect("pods-running=1, devices=vf:2, avoids=mock2, fault-hits=2")
        self.assertEqual((fixture["avoids"], fixture["fault-hits"]), (["mock2"], 2))
        self.assertEqual(examples.parse_expect("pods-running=2, devices=vf:1")["devices"], {"pf": 0, "vf": 1})
        shared = examples.parse_expect("pods-running=2, devices=pf:1, "
                                       "node-label=mock-accel.example.com/pf-sharing=shared, min-kubernetes=1.36")
        self.assertEqual((shared["node_label"], shared["min_kubernetes"]),
                         ("mock-accel.example.com/pf-sharing=shared", (1, 36)))
        with self.assertRaises(wait.Failure):
            examples.parse_expect("pods-running=1")
        with self.assertRaises(wait.Failure):
            examples.parse_expect("pods-running=1, devices=gpu:1")
        meta = examples.parse_expect("pods-running=1, devices=any:2, value=resource.kubernetes.io/numaNode:1, "
                                     "device-status=Ready")
        self.assertEqual((meta["devices"], meta["value"], meta["device_status"]),
                         ({"any": 2}, [("resource.kubernetes.io/numaNode", "1")], "Ready"))
        for bad in ("devices=any:2,vf:1", "devices=vf:1, value=numaNode", "devices=vf:1, value=:1"):
            with self.assertRaises(wait.Failure, msg=bad):
                examples.parse_expect(f"pods-running=1, {bad}")

    def test_kubectl_json_streams(self):
        self.assertEqual(kube.parse_objects('{"kind":"A"}\n{"kind":"B"}\n'), [{"kind": "A"}, {"kind": "B"}])
        self.assertEqual(kube.parse_objects('{"kind":"List","items":[{"kind":"A"}]}'), [{"kind": "A"}])
        self.assertEqual(kube.parse_objects(""), [])

    def test_quantities(self):
        self.assertEqual(kube.quantity_bytes("16Gi"), 17179869184)
        self.assertEqual(kube.quantity_bytes("2147483648"), 2147483648)
        self.assertEqual(kube.quantity_bytes("2G"), 2 * 10**9)

    def test_attribute_values(self):
        d = {"attributes": {"mock-accel.example.com/uuid": {"string": "u"},
                            "resource.kubernetes.io/numaNode": {"int": 0}}}
        self.assertEqual(kube.attr(d, "uuid"), "u")
        self.assertEqual(kube.attr(d, "resource.kubernetes.io/numaNode"), 0)
        self.assertIsNone(kube.attr(d, "physfn"))

    def test_uuid_rule_of_the_contract(self):
        self.assertEqual(uuid_of("NODE1-NUMA0-PF"), "4e4f4445-312d-4e55-4d41-302d50460000")
        self.assertEqual(uuid_of("NODE2-NUMA1-VF1"), "4e4f4445-322d-4e55-4d41-312d56463100")

    def test_env_forms(self):
        self.assertEqual(nodes.env_map({"env": ["A=1", "B=x=y"]}), {"A": "1", "B": "x=y"})
        self.assertEqual(nodes.env_map({"env": {"A": "1"}}), {"A": "1"})

    def test_until_reports_what_it_saw(self):
        with self.assertRaises(wait.Failure) as e:
            wait.until("the impossible", lambda: (False, {"seen": 42}), timeout=0.3, interval=0.1)
        self.assertIn('"seen": 42', str(e.exception))

    def test_socket_dirs_stay_short(self):
        with tempfile.TemporaryDirectory() as d:
            deep = Path(d) / ("x" * 80)
            paths = nodes.layout(deep, "node1")
            self.assertLess(len(str(paths.registry_dir / "mock-accel.example.com-reg.sock")), 108)
            self.assertTrue((deep / "nodes" / "node1" / "kubelet").is_symlink())
            shutil.rmtree(paths.kubelet_real)


class BuildOutputTest(unittest.TestCase):
    """A build's progress: whole lines, routine lines summarised, stdout returned intact."""

    def test_lines_stay_whole_and_routine_lines_are_counted(self):
        script = ("for i in $(seq 1 200); do echo \"   Compiling crate$i v0.1.0\" >&2; done; "
                  "echo 'warning: something worth reading' >&2; "
                  "for i in $(seq 1 50); do echo \"out$i\"; done")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            out = builds._stream(["bash", "-c", script], "cargo")
        self.assertEqual(out, [f"out{i}" for i in range(1, 51)])
        printed = buf.getvalue().splitlines()
        self.assertIn("    cargo: warning: something worth reading", printed)
        self.assertIn("    cargo: 200 crates compiled", printed)
        self.assertFalse([line for line in printed[1:] if "Compiling" in line], printed)

    def test_a_failed_build_reports_its_last_lines(self):
        with contextlib.redirect_stdout(io.StringIO()):
            with self.assertRaises(builds.BuildError) as e:
                builds._stream(["bash", "-c", "echo 'error: no such thing' >&2; exit 3"], "go")
        self.assertIn("exit 3", str(e.exception))
        self.assertIn("error: no such thing", str(e.exception))


class CacheChoiceTest(unittest.TestCase):
    """e2e/cache.sh: MOCK_ACCEL_CACHE wins; an unusable system cache falls back to XDG."""

    def choice(self, **env) -> dict:
        full = {k: v for k, v in os.environ.items() if k not in ("MOCK_ACCEL_CACHE", "XDG_CACHE_HOME")}
        full.update(env)
        out = subprocess.run(["bash", str(builds.REPO / "e2e/cache.sh")], capture_output=True, text=True,
                             check=True, env=full).stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    def test_explicit_cache(self):
        self.assertEqual(self.choice(MOCK_ACCEL_CACHE="/srv/c")["root"], "/srv/c")

    def test_fallback_to_xdg_when_the_system_cache_cannot_be_created(self):
        with tempfile.TemporaryDirectory() as d:
            c = self.choice(MOCK_ACCEL_SYSTEM_CACHE="/dev/null/mock-accel", XDG_CACHE_HOME=d)
            self.assertEqual(c["root"], f"{d}/mock-accel")
            self.assertEqual(c["reuse"], "")
            self.assertIn("/dev/null/mock-accel is not writable", c["reason"])
            c = self.choice(MOCK_ACCEL_SYSTEM_CACHE="/dev/null/mock-accel", HOME=d)
            self.assertEqual(c["root"], f"{d}/.cache/mock-accel")

    def test_a_writable_system_cache_is_used(self):
        with tempfile.TemporaryDirectory() as d:
            c = self.choice(MOCK_ACCEL_SYSTEM_CACHE=f"{d}/sys", XDG_CACHE_HOME=f"{d}/xdg")
            self.assertEqual(c["root"], f"{d}/sys")



class ShardPartitionTest(unittest.TestCase):
    """`run.py --jobs N` splits the suite by estimated cost and keeps each share in order."""

    def test_balances_by_cost_longest_first(self):
        items = [("0", 5), ("1", 10), ("11", 85), ("13a", 170), ("13b", 90), ("14", 75), ("2", 10)]
        groups = shards.partition(items, 2)
        self.assertEqual(sorted(i for g in groups for i in g), sorted(i for i, _ in items))
        costs = dict(items)
        loads = sorted(sum(costs[i] for i in g) for g in groups)
        # Longest-first is within a third of the best split (here 220/225): never worse than 300.
        self.assertEqual(sum(loads), 445)
        self.assertLessEqual(loads[-1], 300)
        # The longest scenario and the next two longest do not all land together.
        self.assertNotIn("13b", next(g for g in groups if "13a" in g))

    def test_each_share_keeps_the_suite_order(self):
        items = [(str(i), float(i % 4 + 1)) for i in range(12)]
        for group in shards.partition(items, 3):
            self.assertEqual(group, sorted(group, key=int))

    def test_never_more_groups_than_items_and_none_empty(self):
        self.assertEqual(shards.partition([("a", 1)], 4), [["a"]])
        self.assertEqual(shards.partition([], 2), [])

    def test_results_are_read_from_a_shards_output(self):
        m = shards.RESULT.match("PASS [3b] claim device status: Ready (6.4s)")
        self.assertEqual((m.group(1), m.group(2)), ("PASS", "[3b] claim device status: Ready"))
        m = shards.RESULT.match("FAIL [13a] outage: a (b) c (167.0s)")
        self.assertEqual((m.group(1), m.group(2)), ("FAIL", "[13a] outage: a (b) c"))


if __name__ == "__main__":
    unittest.main()


class RealNodeTest(unittest.TestCase):
    """The real node's pure parts: which image the overlay deploys, the OCI archive that
    containerd imports, and the pid check of processes that exec another program."""

    def test_image_names_are_normalised_as_containerd_stores_them(self):
        from harness import realnode
        with tempfile.TemporaryDirectory() as d:
            k = Path(d) / "kustomization.yaml"
            for new_name, tag, want in [("mock-accel-dra", "dev", "docker.io/library/mock-accel-dra:dev"),
                                        ("localhost/mock-accel-dra", "dev", "localhost/mock-accel-dra:dev"),
                                        ("acme/dra", "1.0", "docker.io/acme/dra:1.0"),
                                        ("registry.example.com:5000/dra", "1", "registry.example.com:5000/dra:1")]:
                k.write_text(f"images:\n- name: mock-accel-dra\n  newName: {new_name}\n  newTag: {tag}\n")
                self.assertEqual(realnode.image_name(k), want)
            k.write_text("resources: []\n")
            with self.assertRaises(realnode.RealNodeError):
                realnode.image_name(k)

    def test_registration_socket_names_follow_the_plugin_library_order(self) -> None:
        from harness import realnode
        uid = "0f56e49c-8883-4e92-949b-f5b1f315eb23"
        short = Path("/var/lib/kubelet/plugins_registry")
        self.assertEqual(realnode.registration_socket_name(short, "mock-accel.example.com", uid),
                         f"mock-accel.example.com-{uid}-reg.sock")
        # What the agent bound for this UID in a real-node run's 65-byte registry directory.
        long = Path("/tmp/mock-accel-e2e-xnv7zucm/nodes/real1/kubelet/plugins_registry")
        self.assertEqual(realnode.registration_socket_name(long, "mock-accel.example.com", uid),
                         "dra-nnWQ6DfsRb4ippnc664YVQ-reg.sock")
        middle = Path("/" + "d" * 60)
        name = realnode.registration_socket_name(middle, "mock-accel.example.com", uid)
        self.assertTrue(name.startswith("mock-accel.example.com-") and uid not in name, name)
        self.assertLessEqual(len(str(middle / name)), realnode.MAX_SOCKET_PATH)

    def test_oci_archive_is_a_valid_layout_with_the_ref_and_files(self):
        import json as _json
        import tarfile
        from harness import realnode
        with tempfile.TemporaryDirectory() as d:
            exe = Path(d) / "exe"
            exe.write_bytes(b"\x7fELF-not-really")
            out = Path(d) / "img.tar"
            realnode.oci_archive(out, "localhost/x/y:1", {"/usr/local/bin/y": exe}, {"/bin/sh": "busybox"}, ["/y"])
            with tarfile.open(out) as t:
                names = set(t.getnames())
                self.assertIn("oci-layout", names)
                index = _json.load(t.extractfile("index.json"))
                desc = index["manifests"][0]
                self.assertEqual(desc["annotations"]["io.containerd.image.name"], "localhost/x/y:1")
                blob = lambda dg: t.extractfile("blobs/sha256/" + dg.split(":", 1)[1]).read()  # noqa: E731
                manifest = _json.loads(blob(desc["digest"]))
                config = _json.loads(blob(manifest["config"]["digest"]))
                self.assertEqual(config["config"]["Entrypoint"], ["/y"])
                layer = blob(manifest["layers"][0]["digest"])
                self.assertEqual(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"])
                import hashlib as _h
                self.assertEqual(manifest["layers"][0]["digest"], "sha256:" + _h.sha256(layer).hexdigest())
            import io as _io
            with tarfile.open(fileobj=_io.BytesIO(layer)) as lt:
                self.assertEqual(lt.extractfile("usr/local/bin/y").read(), b"\x7fELF-not-really")
                self.assertEqual(lt.getmember("bin/sh").linkname, "busybox")
                self.assertTrue(lt.getmember("usr/local").isdir())

    def test_a_process_that_execs_another_program_is_tracked_by_that_program(self):
        with tempfile.TemporaryDirectory() as d:
            sup = procs.Supervisor(Path(d), die_with_parent=True)
            try:
                sup.start("holder", ["/bin/sh", "-c", "exec sleep 30"], program="sleep")
                time.sleep(0.3)
                later = procs.Supervisor(Path(d), die_with_parent=True)
                self.assertTrue(later.get("holder").alive())
                self.assertEqual(later.stop_all(timeout=2), ["holder"])
            finally:
                sup.stop_all(timeout=2)
