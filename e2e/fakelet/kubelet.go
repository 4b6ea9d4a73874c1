// kubelet.go wires the kubelet's own DRA code into the fakelet the way the kubelet does it
// (pkg/kubelet/kubelet.go and pkg/kubelet/cm/container_manager_linux.go at the version in
// go.mod), so that the driver meets real node code rather than a re-implementation:
//
//   - the DRA manager (k8s.io/kubernetes/pkg/kubelet/cm/dra): claim-info cache with its
//     checkpoint <kubelet dir>/dra_manager_state, PrepareResources, GetResources,
//     UnprepareResources, the reconcile loop that unprepares claims of pods that are gone,
//     the device-health cache (<kubelet dir>/dra_health_state) fed by the plugin's health
//     stream, and UpdateAllocatedResourcesStatus;
//   - its DRA plugin manager (pkg/kubelet/cm/dra/plugin), the registration handler: version
//     negotiation, one gRPC connection per plugin, the health stream, and the ResourceSlice
//     wipes (all of the node's slices at start, a driver's slices 30 s after its last plugin
//     disconnected);
//   - the plugin manager (pkg/kubelet/pluginmanager): watches plugins_registry/ and runs the
//     register and unregister operations.
//
// The fakelet supplies what the kubelet supplies: a kube client, the node, the active pods
// and a sources-ready signal, an event recorder and a logger.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
)

type kubeletDRAConfig struct {
	cs         kubernetes.Interface
	nodeName   string
	kubeletDir string
	// activePods lists the pods whose claims must stay prepared; the manager's reconcile loop
	// unprepares the checkpointed claims of every other pod.
	activePods   dra.ActivePodsFunc
	sourcesReady config.SourcesReady
	recorder     record.EventRecorder
}

// startKubeletDRA creates and starts the kubelet's DRA manager, then the plugin manager with
// the DRA manager's registration handler, in the kubelet's order (the handler exists only
// after Start). Both stop when ctx ends; Stop on the manager waits for its goroutines.
func startKubeletDRA(ctx context.Context, cfg kubeletDRAConfig, logf func(string, ...any)) (*dra.Manager, error) {
	logger := klog.FromContext(ctx)
	logf("kubelet code: feature gates DynamicResourceAllocation=%t ResourceHealthStatus=%t ResourceHealthStatusMessage=%t",
		utilfeature.DefaultFeatureGate.Enabled(features.DynamicResourceAllocation),
		utilfeature.DefaultFeatureGate.Enabled(features.ResourceHealthStatus),
		utilfeature.DefaultFeatureGate.Enabled(features.ResourceHealthStatusMessage))

	// The kubelet passes its root directory: the checkpoint is <root>/dra_manager_state.
	manager, err := dra.NewManager(logger, cfg.cs, cfg.kubeletDir)
	if err != nil {
		return nil, fmt.Errorf("the kubelet's DRA manager (checkpoint %s): %w; delete the file if it is corrupt",
			filepath.Join(cfg.kubeletDir, "dra_manager_state"), err)
	}
	getNode := func(ctx context.Context) (*corev1.Node, error) {
		return cfg.cs.CoreV1().Nodes().Get(ctx, cfg.nodeName, metav1.GetOptions{})
	}
	if err := manager.Start(ctx, cfg.activePods, getNode, cfg.sourcesReady); err != nil {
		return nil, fmt.Errorf("start the kubelet's DRA manager: %w", err)
	}
	logf("kubelet code: DRA manager started (checkpoint %s; it deletes this node's ResourceSlices now)",
		filepath.Join(cfg.kubeletDir, "dra_manager_state"))

	registry := filepath.Join(cfg.kubeletDir, "plugins_registry")
	plugins := pluginmanager.NewPluginManager(registry, cfg.recorder)
	plugins.AddHandler(registerapi.DRAPlugin, manager.GetWatcherHandler())
	go plugins.Run(ctx, cfg.sourcesReady, ctx.Done())
	logf("kubelet code: plugin manager watching %s", registry)
	return manager, nil
}

// kubeletLogging gives the kubelet code a klog text logger on stderr with the given
// verbosity, in the context (contextual logging) and as klog's global logger.
func kubeletLogging(ctx context.Context, node string, verbosity int) (context.Context, klog.Logger) {
	logger := textlogger.NewLogger(textlogger.NewConfig(
		textlogger.Verbosity(verbosity), textlogger.Output(os.Stderr),
	)).WithName("kubelet").WithValues("node", node)
	klog.SetLogger(logger)
	return klog.NewContext(ctx, logger), logger
}

// eventRecorder records Events through the API, with client-go's correlator (aggregation and
// rate limits) as the kubelet's recorder does.
func eventRecorder(cs kubernetes.Interface, node string) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "fakelet", Host: node}), b.Shutdown
}

// sourcesReadyFunc is the kubelet's config.SourcesReady for a node whose only pod source is
// the API server: ready once the pod informer has synced.
type sourcesReadyFunc func() bool

func (f sourcesReadyFunc) AddSource(string) {}
func (f sourcesReadyFunc) AllReady() bool   { return f() }
