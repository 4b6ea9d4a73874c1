// Command fakelet is the end-to-end suite's fake kubelet: a node that "runs" pods without
// containers. Every DRA step is the kubelet's own code at the control plane's version (see
// kubelet.go): plugin registration through the kubelet's plugin manager, and prepare,
// unprepare, the CDI devices of each container and device health through the kubelet's DRA
// manager. What the fakelet adds is the node around that code: the Node and its Lease, a
// pod worker per pod, the CDI resolution a container runtime would do, and the pod status.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const defaultDriver = "mock-accel.example.com"

const usage = `fakelet: a fake kubelet that runs the kubelet's DRA code against a DRA kubelet plugin.

Usage:
  fakelet run --kubeconfig K --node-name N --kubelet-dir D --cdi-dir C --containers-dir X
              [--lease-interval 10s] [--v 3]
      Create/update Node N (Ready, pods=110, no not-ready taint), renew Lease kube-node-lease/N,
      and run the kubelet's plugin manager on D/plugins_registry/ and the kubelet's DRA manager
      (checkpoint D/dra_manager_state, health cache D/dra_health_state; it deletes the node's
      ResourceSlices at start and a driver's slices 30s after its plugin went away). Pods bound
      to N: PrepareResources, the CDI devices of each container resolved with the CDI library
      and recorded in X/<namespace>_<pod>_<container>.json and in the pod annotation
      mock-accel.example.com/container-edits, status Running with the devices' health;
      UnprepareResources and deletion when they go. --v is the kubelet code's log verbosity.
      Logs to stderr. Stops on SIGTERM/SIGINT.

  fakelet register --socket REGSOCK [--driver-name mock-accel.example.com]
      The kubelet's register operation (dial, GetInfo, the DRA handler's validation and
      version negotiation, NotifyRegistrationStatus) against one registration socket; prints
      the PluginInfo plus chosen_version, chosen_health_service, registered and error.

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
	kubeconfig, nodeName, kubeletDir, cdiDir, containersDir string
	leaseInterval                                           time.Duration
	verbosity                                               int
}

func cmdRun(args []string) int {
	var cfg runConfig
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (required)")
	fs.StringVar(&cfg.nodeName, "node-name", "", "name of the Node to act as (required)")
	fs.StringVar(&cfg.kubeletDir, "kubelet-dir", "", "kubelet root: plugins_registry/, plugins/ and the DRA manager's checkpoint live here (required)")
	fs.StringVar(&cfg.cdiDir, "cdi-dir", "", "CDI spec directory the plugin writes to (required)")
	fs.StringVar(&cfg.containersDir, "containers-dir", "", "where each container's CDI edits are recorded (required)")
	fs.DurationVar(&cfg.leaseInterval, "lease-interval", 10*time.Second, "node Lease renewal interval")
	fs.IntVar(&cfg.verbosity, "v", 3, "log verbosity of the kubelet code (klog -v)")
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
	restCfg.Timeout = 30 * time.Second
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
	logf("starting: node %s, kubelet dir %s, CDI dir %s, containers dir %s, API %s",
		cfg.nodeName, cfg.kubeletDir, cfg.cdiDir, cfg.containersDir, restCfg.Host)

	node := &nodeAgent{cs: cs, name: cfg.nodeName, logf: logf}
	nodeUID, err := retryStartup(ctx, logf, "register Node", func() (string, error) {
		uid, err := node.ensureNode(ctx)
		return string(uid), err
	})
	if err != nil {
		return err
	}

	kctx, kubeletLogger := kubeletLogging(ctx, cfg.nodeName, cfg.verbosity)
	recorder, stopEvents := eventRecorder(cs, cfg.nodeName)
	defer stopEvents()

	pods, err := newPodController(cs, cfg.nodeName, cfg.cdiDir, cfg.containersDir, recorder, kubeletLogger, logf)
	if err != nil {
		return err
	}
	// The DRA manager and the plugin manager start once the pod informer has synced: the
	// manager's reconcile loop must not take a pod it has not seen yet for a deleted one.
	if err := pods.startInformer(ctx); err != nil {
		return err
	}
	manager, err := startKubeletDRA(kctx, kubeletDRAConfig{
		cs: cs, nodeName: cfg.nodeName, kubeletDir: cfg.kubeletDir,
		activePods: pods.activePods, sourcesReady: pods.sourcesReady(), recorder: recorder,
	}, logf)
	if err != nil {
		return err
	}
	defer manager.Stop()
	pods.dra = manager

	var wg sync.WaitGroup
	for _, f := range []func(){
		func() { node.heartbeat(ctx, types.UID(nodeUID), cfg.leaseInterval) },
		func() { pods.run(kctx) },
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
