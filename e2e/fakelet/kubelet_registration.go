// kubelet_registration.go registers a plugin through the kubelet's own plugin-manager code
// (k8s.io/kubernetes/pkg/kubelet/pluginmanager/operationexecutor), so that the fakelet talks to
// a registration socket exactly as a real kubelet does: the same dial (the bare socket path as
// the gRPC target, with a Unix context dialer), GetInfo with the kubelet's one-second deadline,
// the handler's validation, then NotifyRegistrationStatus, in the kubelet's order. Dialling
// with a `unix:` target instead once hid that h2-based plugins refused the kubelet's requests.
package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/cache"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager/operationexecutor"
)

// draHandler is the fakelet's DRA plugin handler as the kubelet's plugin manager calls it:
// ValidatePlugin, then RegisterPlugin. It keeps what it learnt for the caller.
type draHandler struct {
	driverName string
	// inUse refuses an endpoint another registered instance already serves (may be nil).
	inUse func(endpoint string) error
	logf  func(format string, args ...any)

	mu            sync.Mutex
	info          pluginInfo
	service       string
	validationErr error
	client        *draClient
}

var _ cache.PluginHandler = (*draHandler)(nil)

func (h *draHandler) ValidatePlugin(_ context.Context, name, endpoint string, versions []string) error {
	info := pluginInfo{Type: registerapi.DRAPlugin, Name: name, Endpoint: endpoint, SupportedVersions: nonNil(versions)}
	service, err := validatePluginInfo(info, h.driverName)
	if err == nil && h.inUse != nil {
		err = h.inUse(endpoint)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.info, h.service, h.validationErr = info, service, err
	return err
}

func (h *draHandler) RegisterPlugin(_ context.Context, name, endpoint string, versions []string, _ *time.Duration) error {
	h.mu.Lock()
	service := h.service
	h.mu.Unlock()
	client, err := newDRAClient(endpoint, service)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.client = client
	h.mu.Unlock()
	return nil
}

func (h *draHandler) DeRegisterPlugin(_ context.Context, name, endpoint string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.client != nil {
		_ = h.client.Close()
		h.client = nil
	}
}

// registration is the outcome of one registration attempt.
type registration struct {
	info    pluginInfo
	service string
	client  *draClient
	// validationErr is set when the plugin answered but was refused (and told so).
	validationErr error
}

// registerLikeKubelet runs the kubelet's register operation for one socket: dial, GetInfo,
// validate, RegisterPlugin, NotifyRegistrationStatus. A nil error means the plugin is
// registered and told so; the DRA client is then open.
func registerLikeKubelet(ctx context.Context, socket, driverName string, inUse func(string) error, logf func(string, ...any)) (registration, error) {
	h := &draHandler{driverName: driverName, inUse: inUse, logf: logf}
	og := operationexecutor.NewOperationGenerator(record.NewFakeRecorder(16))
	asw := cache.NewActualStateOfWorld()
	handlers := map[string]cache.PluginHandler{registerapi.DRAPlugin: h}
	uid := types.UID(fmt.Sprintf("fakelet-%d", time.Now().UnixNano()))
	err := og.GenerateRegisterPluginFunc(ctx, socket, uid, handlers, asw)()

	h.mu.Lock()
	defer h.mu.Unlock()
	out := registration{info: h.info, service: h.service, client: h.client, validationErr: h.validationErr}
	if err != nil {
		if out.client != nil {
			_ = out.client.Close()
			out.client = nil
		}
		if out.validationErr != nil {
			return out, fmt.Errorf("plugin at %s refused: %w", socket, out.validationErr)
		}
		return out, fmt.Errorf("registering the plugin at %s: %w", socket, err)
	}
	if out.client == nil {
		return out, errors.New("the kubelet's register operation succeeded without calling RegisterPlugin")
	}
	return out, nil
}
