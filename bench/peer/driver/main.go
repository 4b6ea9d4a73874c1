// Command peerbench drives two DRA kubelet plugins side by side, as the kubelet does, and
// prints a table of the two with their ratio: this driver's node agent ("ours") and the
// Kubernetes DRA test driver in its kubelet-plugin mode ("peer"), built on the `kubeletplugin`
// helper that Go drivers use.
//
// Both run on this machine in the same run against the same API server and the same Node, and
// fetch their ResourceClaims from it: real claims, allocated one device each. The bench plays
// the kubelet with the kubelet's generated DRA v1 client: it watches for the registration
// socket, calls GetInfo and NotifyRegistrationStatus, then NodePrepareResources and
// NodeUnprepareResources on the endpoint GetInfo names. It measures
//
//   - the time from process start to the registration socket answering GetInfo (median of
//     several starts);
//   - prepare+unprepare latency (p50, p99, max) over sequential cycles, one cycle of one plugin
//     then one of the other;
//   - claims per second with 1 and with 8 concurrent callers (each on its own claim and device),
//     the plugins taking turns in blocks;
//   - CPU seconds per 1,000 cycles (utime+stime from /proc/<pid>/stat over the latency cycles);
//   - resident memory (/proc/<pid>/status) idle, after the first 1,000 and after all cycles.
//
// The control plane, the Node, the MockAccelNode CRD and the binaries come from the caller
// (bench/peer/run.py, `make bench-peer`).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	oursDriver = "mock-accel.example.com"
	peerDriver = "test-driver.cdi.k8s.io"
	// startLimit bounds one start-up, stopLimit one exit after SIGTERM.
	startLimit = 60 * time.Second
	stopLimit  = 15 * time.Second
)

type options struct {
	kubeconfig, ours, peer, work, cdiRoot, nodeRoot, node, namespace, jsonOut, traceOut string
	cycles, mark, starts, blocks, perBlock, devices                                     int
	settle                                                                              time.Duration

	// oursAgent runs our node agent (`<oursAgent> node-agent ...`); ours makes the tree.
	oursAgent string
	// oursEnv is added to our node agent's environment (run.py passes the DaemonSet's).
	oursEnv envList
}

// envList is a repeatable NAME=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if name, _, ok := strings.Cut(v, "="); !ok || name == "" {
		return fmt.Errorf("%q is not NAME=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the API server both plugins use (admin)")
	flag.StringVar(&o.ours, "ours", "", "the mock-accel-dra binary (an optimised build): makes the simulated tree, and runs the node agent without --ours-agent")
	flag.StringVar(&o.oursAgent, "ours-agent", "", "the binary that runs our node agent (`<binary> node-agent ...`), e.g. mock-accel-node-agent; default --ours")
	flag.Var(&o.oursEnv, "ours-env", "NAME=VALUE to add to our node agent's environment (repeatable), e.g. what its DaemonSet sets")
	flag.StringVar(&o.peer, "peer", "", "the DRA test driver binary (bench/peer/build.sh peer)")
	flag.StringVar(&o.work, "work", "", "directory for the plugins' sockets, checkpoints and logs, and our sysfs tree without --node-root (keep it short: socket paths are limited to 108 bytes)")
	flag.StringVar(&o.cdiRoot, "cdi-root", "", "directory for the two CDI directories (tmpfs, as /var/run/cdi is on a node); default <work>/cdi")
	flag.StringVar(&o.nodeRoot, "node-root", "", "directory for our simulated sysfs tree and /dev (tmpfs, as sysfs is a RAM file system: on a disk shared with other jobs each status register write would measure the disk); default <work>/ours")
	flag.StringVar(&o.node, "node", "bench1", "the Node both plugins serve (must exist)")
	flag.StringVar(&o.namespace, "namespace", "peerbench", "namespace of the ResourceClaims")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.traceOut, "trace", "", "also write every latency cycle as CSV to this file (plugin, start in Unix ns, prepare and unprepare ns), to line the tail up with the plugins' logs")
	flag.IntVar(&o.cycles, "cycles", 10000, "sequential prepare+unprepare cycles per plugin (latency, CPU, memory)")
	flag.IntVar(&o.mark, "mark", 1000, "read memory after this many cycles too")
	flag.IntVar(&o.starts, "starts", 5, "start-ups per plugin for the time to registered")
	flag.IntVar(&o.blocks, "blocks", 4, "throughput: blocks per plugin and concurrency, the plugins taking turns")
	flag.IntVar(&o.perBlock, "per-block", 250, "throughput: cycles per block")
	flag.IntVar(&o.devices, "devices", 8, "claims (devices) per plugin: the highest concurrency")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "wait after the last start before reading idle memory")
	flag.Parse()
	if o.kubeconfig == "" || o.ours == "" || o.peer == "" || o.work == "" {
		fmt.Fprintln(os.Stderr, "peerbench: --kubeconfig, --ours, --peer and --work are required")
		os.Exit(2)
	}
	if o.cdiRoot == "" {
		o.cdiRoot = filepath.Join(o.work, "cdi")
	}
	if o.oursAgent == "" {
		o.oursAgent = o.ours
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runBench(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "peerbench: %v\n", err)
		os.Exit(1)
	}
}

func progress(msg string) {
	fmt.Fprintf(os.Stderr, "[peerbench %s] %s\n", time.Now().Format("15:04:05"), msg)
}

func runBench(ctx context.Context, o options) (err error) {
	config, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("read kubeconfig %s: %w", o.kubeconfig, err)
	}
	// Setup only (claims, namespace): client-go's default 5 requests per second would make it slow.
	config.QPS, config.Burst = 100, 200
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("API client from %s: %w", o.kubeconfig, err)
	}
	ours, oursDevices, err := oursPlugin(ctx, o)
	if err != nil {
		return err
	}
	peer, peerDevices, err := peerPlugin(o)
	if err != nil {
		return err
	}
	if err := ensureNamespace(ctx, client, o.namespace); err != nil {
		return err
	}
	runs := []*run{{plugin: ours, result: newResult("ours")}, {plugin: peer, result: newResult("peer")}}
	for i, devices := range [][]device{oursDevices, peerDevices} {
		r := runs[i]
		if r.claims, err = createClaims(ctx, client, o.namespace, o.node, r.label, devices); err != nil {
			return err
		}
	}
	progress(fmt.Sprintf("%d allocated ResourceClaims per plugin in namespace %s", o.devices, o.namespace))
	defer func() {
		for _, r := range runs {
			if stopErr := r.stop(stopLimit); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
		}
	}()

	// Start-up: each plugin `starts` times, alternating; the last start stays up.
	for s := 0; s < o.starts; s++ {
		for k := range runs {
			r := runs[(s+k)%len(runs)]
			took, err := r.start(ctx, startLimit)
			if err != nil {
				return err
			}
			r.result.Registered = append(r.result.Registered, took)
			if s < o.starts-1 {
				if err := r.stop(stopLimit); err != nil {
					return err
				}
			}
		}
	}
	progress(fmt.Sprintf("registered: ours %v, peer %v (medians of %d starts)",
		median(runs[0].result.Registered).Round(time.Millisecond),
		median(runs[1].result.Registered).Round(time.Millisecond), o.starts))
	time.Sleep(o.settle)
	for _, r := range runs {
		if r.result.Idle, err = readMemory(r.pid()); err != nil {
			return err
		}
	}

	// Warm-up, not measured: connections, first-use paths.
	for _, r := range runs {
		for n := 0; n < 20; n++ {
			if _, err := cycle(ctx, r.dra, r.claims[0]); err != nil {
				return fmt.Errorf("%s, warm-up: %w", r.label, err)
			}
		}
	}
	progress(fmt.Sprintf("latency: %d sequential cycles per plugin, interleaved", o.cycles))
	if err := latencyPhase(ctx, runs, o.cycles, o.mark, progress); err != nil {
		return err
	}
	concurrencies := []int{1, o.devices}
	for _, c := range concurrencies {
		progress(fmt.Sprintf("throughput: concurrency %d, %d blocks of %d cycles per plugin", c, o.blocks, o.perBlock))
		if err := throughputPhase(ctx, runs, c, o.blocks, o.perBlock); err != nil {
			return err
		}
	}
	for _, r := range runs {
		if err := r.stop(stopLimit); err != nil {
			return err
		}
		r.result.summarize()
	}
	writeTable(os.Stdout, rows(runs[0].result, runs[1].result, o.cycles, o.mark, concurrencies),
		runs[0].result, runs[1].result)
	if o.jsonOut != "" {
		data, err := json.MarshalIndent([]*result{runs[0].result, runs[1].result}, "", "  ")
		if err != nil {
			return fmt.Errorf("encode the results: %w", err)
		}
		if err := os.WriteFile(o.jsonOut, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", o.jsonOut, err)
		}
	}
	if o.traceOut != "" {
		if err := os.WriteFile(o.traceOut, traceCSV(runs), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", o.traceOut, err)
		}
	}
	return nil
}

// oursPlugin creates the simulated sysfs tree (one NUMA node, 2 PFs with 7 static VFs each)
// and returns the node agent and one VF per claim.
func oursPlugin(ctx context.Context, o options) (*plugin, []device, error) {
	dir := filepath.Join(o.work, "ours")
	nodeRoot := o.nodeRoot
	if nodeRoot == "" {
		nodeRoot = dir
	}
	sys, dev := filepath.Join(nodeRoot, "sys"), filepath.Join(nodeRoot, "dev")
	for _, d := range []string{dir, sys, dev} {
		if err := os.RemoveAll(d); err != nil {
			return nil, nil, fmt.Errorf("clear %s: %w", d, err)
		}
	}
	create := exec.CommandContext(ctx, o.ours, "sim", "create", "--root", sys, "--dev-root", dev,
		"--topology", "custom", "--numa-nodes", "1", "--pfs-per-numa", "2", "--vfs-per-pf", "7")
	if out, err := create.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w: %s", strings.Join(create.Args, " "), err, out)
	}
	discover := exec.CommandContext(ctx, o.ours, "discover", "--sysfs-root", sys, "-o", "json")
	out, err := discover.Output()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", strings.Join(discover.Args, " "), err)
	}
	var found []struct {
		Name       string `json:"name"`
		DeviceType string `json:"deviceType"`
		NumaNode   *int   `json:"numaNode"`
	}
	if err := json.Unmarshal(out, &found); err != nil {
		return nil, nil, fmt.Errorf("decode the output of %s: %w", strings.Join(discover.Args, " "), err)
	}
	var devices []device
	for _, d := range found {
		if d.DeviceType == "vf" && d.NumaNode != nil {
			devices = append(devices, device{driver: oursDriver, pool: fmt.Sprintf("%s/numa%d", o.node, *d.NumaNode), name: d.Name})
		}
	}
	// mock1, mock2, ... in numeric order, so runs pick the same devices.
	sort.Slice(devices, func(i, j int) bool { return deviceNumber(devices[i].name) < deviceNumber(devices[j].name) })
	if len(devices) < o.devices {
		return nil, nil, fmt.Errorf("the simulated tree in %s has %d VFs, want %d", sys, len(devices), o.devices)
	}
	pluginDir := filepath.Join(dir, "plugins", oursDriver)
	registry := filepath.Join(dir, "registry")
	p := &plugin{
		label:  "ours",
		driver: oursDriver,
		argv: []string{o.oursAgent, "node-agent", "--node-name", o.node, "--driver-name", oursDriver,
			"--sysfs-root", sys, "--dev-root", dev, "--cdi-dir", filepath.Join(o.cdiRoot, "ours"),
			"--registry-dir", registry, "--plugin-dir", pluginDir, "--metrics-addr", "127.0.0.1:0"},
		env:         append([]string{"KUBECONFIG=" + o.kubeconfig}, o.oursEnv...),
		registryDir: registry,
		logPath:     filepath.Join(o.work, "ours.log"),
	}
	if err := os.MkdirAll(pluginDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", pluginDir, err)
	}
	return p, devices[:o.devices], nil
}

func deviceNumber(name string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(name, "mock"))
	return n
}

// peerPlugin returns the test driver with one simulated device per claim (its pool is the
// node name, its devices device-00, device-01, ...). Its prepare writes one CDI spec file per
// claim and its unprepare removes it, as ours does.
func peerPlugin(o options) (*plugin, []device, error) {
	dir := filepath.Join(o.work, "peer")
	registry := filepath.Join(dir, "registry")
	// The test driver creates the parent of its socket directory but not the directory itself
	// (a DaemonSet mounts it from the host).
	socketDir := filepath.Join(dir, "plugins", peerDriver)
	if err := os.MkdirAll(socketDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", socketDir, err)
	}
	p := &plugin{
		label:  "peer",
		driver: peerDriver,
		argv: []string{o.peer, "--kubeconfig", o.kubeconfig, "kubelet-plugin", "--node-name", o.node,
			"--plugin-registration-path", registry, "--datadir", filepath.Join(dir, "plugins"),
			"--cdi-dir", filepath.Join(o.cdiRoot, "peer"), "--num-devices", strconv.Itoa(o.devices)},
		registryDir: registry,
		logPath:     filepath.Join(o.work, "peer.log"),
	}
	var devices []device
	for i := 0; i < o.devices; i++ {
		devices = append(devices, device{driver: peerDriver, pool: o.node, name: fmt.Sprintf("device-%02d", i)})
	}
	return p, devices, nil
}
