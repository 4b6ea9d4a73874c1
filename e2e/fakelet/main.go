// Command fakelet is the end-to-end suite's fake kubelet. It drives a DRA kubelet plugin the
// way the kubelet does (registration through the plugin registry directory, NodePrepareResources
// and NodeUnprepareResources with the kubelet's generated stubs, CDI resolution with the
// upstream library), keeps a fake Node alive, and moves the node's pods through their
// lifecycle. One-shot subcommands perform single steps for targeted tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const defaultDriver = "mock-accel.example.com"

const usage = `fakelet: a fake kubelet that drives a DRA kubelet plugin for end-to-end tests.

Usage:
  fakelet run --kubeconfig K --node-name N --kubelet-dir D --cdi-dir C --containers-dir X
              [--driver-name mock-accel.example.com] [--lease-interval 10s] [--wipe-delay 30s]
      Create/update Node N (Ready, pods=110, no not-ready taint), renew Lease kube-node-lease/N,
      delete every ResourceSlice of N at start, register the plugin found in D/plugins_registry/,
      prepare the claims of pods bound to N and mark them Running, unprepare and delete pods
      being deleted. Container edits go to X/<namespace>_<pod>_<container>.json and to the pod
      annotation mock-accel.example.com/container-edits. Checkpoint: D/fakelet-state.json.
      Logs to stderr, one line per step, prefixed fakelet[N]. Stops on SIGTERM/SIGINT.

  fakelet register --socket REGSOCK [--driver-name mock-accel.example.com]
      GetInfo, validate like the kubelet, NotifyRegistrationStatus; prints the PluginInfo plus
      chosen_version, registered and error.

  fakelet prepare --endpoint DRASOCK --claim ns/name/uid [--claim ...] [--api v1|v1beta1]
  fakelet unprepare --endpoint DRASOCK --claim ns/name/uid [--claim ...] [--api v1|v1beta1]
      One NodePrepareResources / NodeUnprepareResources call (default --api v1); prints
      {"api", "endpoint", "claims": {<uid>: ...}, "problems": [...]}, or {"error", "code"} when
      the call itself failed.

  fakelet cdi-resolve --cdi-dir C --id vendor/class=name [--id ...]
      Load C strictly with the CDI library and inject the ids into an empty OCI spec; prints
      {"env", "mounts", "deviceNodes", "cdiDevices"} or {"error", "specErrors", "unresolved"}.

One-shot commands print JSON on stdout and exit 0 on success, 1 on failure, 2 on bad usage.
`

func main() {
	os.Exit(dispatch(os.Args[1:]))
}

func dispatch(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:])
	case "register":
		return cmdRegister(args[1:])
	case "prepare":
		return cmdPrepare(args[1:])
	case "unprepare":
		return cmdUnprepare(args[1:])
	case "cdi-resolve":
		return cmdCDIResolve(args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "fakelet: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

type runConfig struct {
	kubeconfig, nodeName, kubeletDir, cdiDir, containersDir, driverName string
	leaseInterval, wipeDelay                                            time.Duration
}

func cmdRun(args []string) int {
	var cfg runConfig
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (required)")
	fs.StringVar(&cfg.nodeName, "node-name", "", "name of the Node to act as (required)")
	fs.StringVar(&cfg.kubeletDir, "kubelet-dir", "", "kubelet root: plugins_registry/ and plugins/ live here (required)")
	fs.StringVar(&cfg.cdiDir, "cdi-dir", "", "CDI spec directory the plugin writes to (required)")
	fs.StringVar(&cfg.containersDir, "containers-dir", "", "where each container's CDI edits are recorded (required)")
	fs.StringVar(&cfg.driverName, "driver-name", defaultDriver, "DRA driver to register and drive")
	fs.DurationVar(&cfg.leaseInterval, "lease-interval", 10*time.Second, "node Lease renewal interval")
	fs.DurationVar(&cfg.wipeDelay, "wipe-delay", 30*time.Second, "how long a vanished driver may stay away before its slices are deleted")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if cfg.kubeconfig == "" || cfg.nodeName == "" || cfg.kubeletDir == "" || cfg.cdiDir == "" || cfg.containersDir == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakelet run: --kubeconfig, --node-name, --kubelet-dir, --cdi-dir and --containers-dir are required")
		return exitUsage
	}
	logger := log.New(os.Stderr, "fakelet["+cfg.nodeName+"] ", log.Ltime|log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, logger.Printf); err != nil {
		logger.Printf("fatal: %v", err)
		return exitFailure
	}
	logger.Printf("stopped")
	return exitOK
}

func run(ctx context.Context, cfg runConfig, logf func(string, ...any)) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", cfg.kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	restCfg.UserAgent = "fakelet/" + cfg.nodeName
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", restCfg.Host, err)
	}
	for _, d := range []string{cfg.kubeletDir, cfg.cdiDir, cfg.containersDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create directory %s: %w", d, err)
		}
	}
	logf("starting: node %s, driver %s, kubelet dir %s, CDI dir %s, containers dir %s, API %s",
		cfg.nodeName, cfg.driverName, cfg.kubeletDir, cfg.cdiDir, cfg.containersDir, restCfg.Host)

	node := &nodeAgent{cs: cs, name: cfg.nodeName, driverName: cfg.driverName, logf: logf}
	nodeUID, err := retryStartup(ctx, logf, "register Node", func() (string, error) {
		uid, err := node.ensureNode(ctx)
		return string(uid), err
	})
	if err != nil {
		return err
	}
	if _, err := retryStartup(ctx, logf, "start-up slice wipe", func() (string, error) {
		return "", node.wipeAllSlices(ctx)
	}); err != nil {
		return err
	}

	state, err := loadState(filepath.Join(cfg.kubeletDir, "fakelet-state.json"))
	if err != nil {
		return err
	}
	if n := len(state.Pods); n > 0 {
		logf("checkpoint: %d pod(s) with prepared claims from a previous run", n)
	}
	registry := newPluginRegistry(filepath.Join(cfg.kubeletDir, "plugins_registry"), cfg.driverName, cfg.wipeDelay, logf)
	registry.wipe = node.wipeDriverSlices
	pods, err := newPodController(cs, cfg.nodeName, cfg.driverName, cfg.cdiDir, cfg.containersDir, registry, state, logf)
	if err != nil {
		return err
	}
	// Pods waiting for the driver retry now; in the background, as a prepare may hold the lock.
	registry.onRegistered = func() { go pods.enqueueAll() }

	var wg sync.WaitGroup
	for _, f := range []func(){
		func() { node.heartbeat(ctx, types.UID(nodeUID), cfg.leaseInterval) },
		func() { registry.run(ctx) },
		func() { pods.run(ctx) },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	<-ctx.Done()
	logf("signal received; shutting down")
	wg.Wait()
	return nil
}

// retryStartup retries a start-up step for up to a minute: the API server may still be warming
// up when the harness starts the fakelet.
func retryStartup(ctx context.Context, logf func(string, ...any), what string, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		v, err := f()
		if err == nil {
			return v, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		logf("%s failed, retrying: %v", what, err)
		select {
		case <-ctx.Done():
			return "", errors.New(what + ": interrupted")
		case <-time.After(time.Second):
		}
	}
}
