// oneshot.go holds the one-shot commands for targeted tests: each does one kubelet-side step
// against a plugin socket or a CDI directory, prints JSON on stdout and exits non-zero when
// the step failed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	draplugin "k8s.io/kubernetes/pkg/kubelet/cm/dra/plugin"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/cache"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/operationexecutor"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// registration is what `fakelet register` prints.
type registration struct {
	Type              string   `json:"type"`
	Name              string   `json:"name"`
	Endpoint          string   `json:"endpoint"`
	SupportedVersions []string `json:"supported_versions"`
	// ChosenVersion is the DRA service the kubelet's handler negotiated, as it logs it.
	ChosenVersion string `json:"chosen_version"`
	Registered    bool   `json:"registered"`
	Error         string `json:"error"`
}

// recordingHandler passes the plugin manager's calls to the kubelet's DRA registration handler
// and keeps what the plugin announced.
type recordingHandler struct {
	cache.PluginHandler
	mu          sync.Mutex
	out         *registration
	validateErr error
	registerErr error
}

func (h *recordingHandler) ValidatePlugin(ctx context.Context, name, endpoint string, versions []string) error {
	err := h.PluginHandler.ValidatePlugin(ctx, name, endpoint, versions)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.out.Type, h.out.Name, h.out.Endpoint = registerapi.DRAPlugin, name, endpoint
	h.out.SupportedVersions = append([]string{}, versions...)
	h.validateErr = err
	return err
}

func (h *recordingHandler) RegisterPlugin(ctx context.Context, name, endpoint string, versions []string, timeout *time.Duration) error {
	err := h.PluginHandler.RegisterPlugin(ctx, name, endpoint, versions, timeout)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.registerErr = err
	return err
}

// registerOnce runs the kubelet's register operation (pluginmanager/operationexecutor: dial
// with the bare socket path, GetInfo with its one-second deadline, then the handler) with the
// kubelet's DRA registration handler (cm/dra/plugin) against one registration socket. The
// handler's choice of service is read from its own log record.
func registerOnce(socket, driver string) registration {
	out := registration{SupportedVersions: []string{}}
	var mu sync.Mutex
	logger := funcr.NewJSON(func(obj string) {
		var rec map[string]any
		if json.Unmarshal([]byte(obj), &rec) != nil || rec["msg"] != "Registered DRA plugin" {
			return
		}
		if s, ok := rec["chosenService"].(string); ok {
			mu.Lock()
			out.ChosenVersion = s
			mu.Unlock()
		}
	}, funcr.Options{Verbosity: 3})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()

	// Without a kube client the handler wipes no ResourceSlices; without a stream handler it
	// opens no health stream.
	pm := draplugin.NewDRAPluginManager(ctx, nil, nil, nil, 30*time.Second)
	defer pm.Stop()
	h := &recordingHandler{PluginHandler: pm, out: &out}
	og := operationexecutor.NewOperationGenerator(record.NewFakeRecorder(16))
	uid := types.UID(fmt.Sprintf("fakelet-%d", time.Now().UnixNano()))
	opErr := og.GenerateRegisterPluginFunc(ctx, socket, uid, map[string]cache.PluginHandler{registerapi.DRAPlugin: h},
		cache.NewActualStateOfWorld())()

	h.mu.Lock()
	defer h.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	var errs []error
	switch {
	case h.validateErr != nil:
		errs = append(errs, fmt.Errorf("the kubelet's DRA handler refused the plugin: %w", h.validateErr))
	case h.registerErr != nil:
		errs = append(errs, fmt.Errorf("the kubelet's DRA handler could not register the plugin: %w", h.registerErr))
	case opErr != nil:
		errs = append(errs, opErr)
	}
	if opErr == nil && h.validateErr == nil && h.registerErr == nil {
		if _, err := pm.GetPlugin(out.Name); err != nil {
			errs = append(errs, err)
		} else {
			out.Registered = true
		}
	}
	if out.Registered && out.ChosenVersion == "" {
		errs = append(errs, errors.New("registered, but the kubelet's handler logged no chosenService (did its log message change?)"))
	}
	if out.Name != "" && out.Name != driver {
		errs = append(errs, fmt.Errorf("plugin name %q is not the expected driver %q (the kubelet accepts any name)", out.Name, driver))
	}
	if len(errs) > 0 {
		out.Error = errors.Join(errs...).Error()
	}
	return out
}

// cmdRegister is the regression check for plugins that refuse the kubelet's requests.
func cmdRegister(args []string) int {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	socket := fs.String("socket", "", "registration socket (required)")
	driver := fs.String("driver-name", defaultDriver, "expected driver name")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *socket == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakelet register: --socket is required, no positional arguments")
		return exitUsage
	}
	out := registerOnce(*socket, *driver)
	printJSON(out)
	if !out.Registered || out.Error != "" {
		return exitFailure
	}
	return exitOK
}

// cmdCDIResolve: load the CDI directory strictly and inject the given ids.
func cmdCDIResolve(args []string) int {
	fs := flag.NewFlagSet("cdi-resolve", flag.ContinueOnError)
	dir := fs.String("cdi-dir", "", "CDI spec directory (required)")
	var ids stringList
	fs.Var(&ids, "id", "fully qualified CDI device id vendor/class=name (repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakelet cdi-resolve: --cdi-dir is required, no positional arguments")
		return exitUsage
	}
	edits, err := resolveCDI(*dir, ids)
	if err != nil {
		printJSON(cdiErrorJSON(err))
		return exitFailure
	}
	printJSON(edits)
	return exitOK
}
