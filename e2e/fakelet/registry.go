// registry.go owns plugin discovery the way the kubelet's plugin manager does it: watch the
// registry directory for sockets, register each through the kubelet's own register operation
// (kubelet_registration.go: dial, GetInfo, validate as the DRA handler does,
// NotifyRegistrationStatus), keep re-checking registered plugins, and wipe the driver's
// ResourceSlices when no instance has come back within the wipe delay.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const (
	registryPollInterval = 200 * time.Millisecond
	// healthCheckInterval is how often a registered plugin's GetInfo is called again.
	healthCheckInterval = 10 * time.Second
	// retryInterval: a socket whose GetInfo failed is tried again this often; one that failed
	// validation only every healthCheckInterval (it would fail the same way).
	retryInterval  = 1 * time.Second
	getInfoTimeout = 10 * time.Second
)

// validatePluginInfo applies the kubelet DRA handler's checks to a GetInfo answer and returns
// the DRA service to use: the first entry of the plugin's list that this fakelet supports.
func validatePluginInfo(info pluginInfo, driverName string) (string, error) {
	if info.Type != registerapi.DRAPlugin {
		return "", fmt.Errorf("plugin type %q is not %q", info.Type, registerapi.DRAPlugin)
	}
	if info.Name != driverName {
		return "", fmt.Errorf("plugin name %q does not match the expected driver %q", info.Name, driverName)
	}
	if info.Endpoint == "" {
		return "", errors.New("plugin endpoint is empty")
	}
	if fi, err := os.Stat(info.Endpoint); err != nil {
		return "", fmt.Errorf("plugin endpoint %s: %w", info.Endpoint, err)
	} else if fi.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("plugin endpoint %s is not a socket (mode %s)", info.Endpoint, fi.Mode())
	}
	if len(info.SupportedVersions) == 0 {
		return "", errors.New("plugin lists no supported_versions")
	}
	for _, v := range info.SupportedVersions {
		if v == serviceV1 || v == serviceV1beta1 {
			return v, nil
		}
	}
	return "", fmt.Errorf("none of the plugin's supported_versions %q is supported (want %q or %q)",
		info.SupportedVersions, serviceV1, serviceV1beta1)
}

// socketID changes when a socket file is re-created (a restarted plugin), even at the same path.
type socketID struct {
	dev, ino uint64
	mtime    time.Time
}

func statSocket(path string) (socketID, bool) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return socketID{}, false
	}
	id := socketID{mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = st.Dev, st.Ino
	}
	return id, true
}

// pluginInstance is what the registry knows about one registration socket.
type pluginInstance struct {
	socket       string
	id           socketID
	registered   bool
	endpoint     string
	service      string
	client       *draClient
	registeredAt time.Time
	nextCheck    time.Time // next GetInfo: health check when registered, retry otherwise
}

type pluginRegistry struct {
	dir        string
	driverName string
	wipeDelay  time.Duration
	logf       func(format string, args ...any)
	// wipe deletes the driver's slices on this node; called from the registry loop.
	wipe func(ctx context.Context) error
	// onRegistered is called after an instance registers (pods waiting for the driver retry).
	onRegistered func()

	mu        sync.Mutex
	instances map[string]*pluginInstance
	available bool      // at least one registered instance
	wipeAt    time.Time // zero unless a wipe is pending
}

func newPluginRegistry(dir, driverName string, wipeDelay time.Duration, logf func(string, ...any)) *pluginRegistry {
	return &pluginRegistry{
		dir: dir, driverName: driverName, wipeDelay: wipeDelay, logf: logf,
		instances: map[string]*pluginInstance{},
	}
}

// client returns the DRA client of the newest registered instance, as the kubelet prefers.
func (r *pluginRegistry) client() (*draClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *pluginInstance
	for _, in := range r.instances {
		if in.registered && (best == nil || in.registeredAt.After(best.registeredAt)) {
			best = in
		}
	}
	if best == nil {
		return nil, fmt.Errorf("DRA driver %s is not registered on this node", r.driverName)
	}
	return best.client, nil
}

// run polls the registry directory until ctx ends, then closes every connection.
func (r *pluginRegistry) run(ctx context.Context) {
	if err := os.MkdirAll(r.dir, 0o750); err != nil {
		r.logf("registry: cannot create %s: %v", r.dir, err)
	}
	r.logf("registry: watching %s for %s plugin sockets", r.dir, r.driverName)
	t := time.NewTicker(registryPollInterval)
	defer t.Stop()
	for {
		r.scan(ctx)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for _, in := range r.instances {
				if in.client != nil {
					_ = in.client.Close()
				}
			}
			r.mu.Unlock()
			return
		case <-t.C:
		}
	}
}

// scan does one reconcile pass: new, changed and removed sockets, due GetInfo calls, the wipe
// timer.
func (r *pluginRegistry) scan(ctx context.Context) {
	seen := map[string]socketID{}
	entries, err := os.ReadDir(r.dir)
	if err != nil && !os.IsNotExist(err) {
		r.logf("registry: reading %s: %v", r.dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(r.dir, e.Name())
		if id, ok := statSocket(p); ok {
			seen[p] = id
		}
	}

	now := time.Now()
	r.mu.Lock()
	for p, in := range r.instances {
		id, ok := seen[p]
		switch {
		case !ok:
			r.deregisterLocked(in, "registration socket removed")
			delete(r.instances, p)
		case id != in.id:
			r.deregisterLocked(in, "registration socket re-created")
			r.logf("registry: socket %s re-created", p)
			r.instances[p] = &pluginInstance{socket: p, id: id}
		}
	}
	for p, id := range seen {
		if _, ok := r.instances[p]; !ok {
			r.logf("registry: new socket %s", p)
			r.instances[p] = &pluginInstance{socket: p, id: id}
		}
	}
	var due []*pluginInstance
	for _, in := range r.instances {
		if !now.Before(in.nextCheck) {
			due = append(due, in)
		}
	}
	r.mu.Unlock()

	// GetInfo may block; it runs without the lock so that pods can still pick a client.
	registeredNow := false
	for _, in := range due {
		if r.check(ctx, in) {
			registeredNow = true
		}
	}

	r.mu.Lock()
	avail := false
	for _, in := range r.instances {
		avail = avail || in.registered
	}
	switch {
	case r.available && !avail:
		r.wipeAt = time.Now().Add(r.wipeDelay)
		r.logf("registry: driver %s has no registered instance; its ResourceSlices on this node will be wiped in %s unless it returns", r.driverName, r.wipeDelay)
	case !r.available && avail && !r.wipeAt.IsZero():
		r.wipeAt = time.Time{}
		r.logf("registry: driver %s is back; slice wipe cancelled", r.driverName)
	}
	r.available = avail
	wipeDue := !r.wipeAt.IsZero() && !time.Now().Before(r.wipeAt)
	if wipeDue {
		r.wipeAt = time.Time{}
	}
	r.mu.Unlock()

	if wipeDue && r.wipe != nil {
		r.logf("registry: wipe delay of %s passed without driver %s; wiping its ResourceSlices", r.wipeDelay, r.driverName)
		if err := r.wipe(ctx); err != nil {
			r.logf("registry: wiping slices of %s failed: %v", r.driverName, err)
		}
	}
	if registeredNow && r.onRegistered != nil {
		r.onRegistered()
	}
}

// check registers an unregistered instance through the kubelet's own register operation, and
// health-checks a registered one with GetInfo. Returns true when the instance has just
// registered.
func (r *pluginRegistry) check(ctx context.Context, in *pluginInstance) bool {
	r.mu.Lock()
	registered := in.registered
	r.mu.Unlock()
	if registered {
		r.healthCheck(ctx, in)
		return false
	}

	reg, err := registerLikeKubelet(ctx, in.socket, r.driverName,
		func(endpoint string) error { return r.endpointInUse(in, endpoint) }, r.logf)
	if reg.info.Name != "" {
		r.logf("registry: GetInfo %s: type=%s name=%s endpoint=%s supported_versions=%q",
			in.socket, reg.info.Type, reg.info.Name, reg.info.Endpoint, reg.info.SupportedVersions)
	}
	if err != nil {
		if reg.validationErr != nil {
			// The kubelet's code has told the plugin (NotifyRegistrationStatus false); it would
			// fail the same way until the plugin changes.
			r.logf("registry: %v; NotifyRegistrationStatus(plugin_registered=false) sent", err)
			r.setNext(in, healthCheckInterval)
			return false
		}
		r.logf("registry: %v (retrying in %s)", err, retryInterval)
		r.setNext(in, retryInterval)
		return false
	}
	r.logf("registry: NotifyRegistrationStatus(plugin_registered=true) sent to %s", in.socket)
	r.mu.Lock()
	in.registered = true
	in.endpoint = reg.info.Endpoint
	in.service = reg.service
	in.client = reg.client
	in.registeredAt = time.Now()
	in.nextCheck = in.registeredAt.Add(healthCheckInterval)
	r.mu.Unlock()
	r.logf("registry: plugin %s registered: endpoint %s, service %s", r.driverName, reg.info.Endpoint, reg.service)
	return true
}

// healthCheck calls GetInfo on a registered instance and de-registers it when the plugin no
// longer answers, or answers differently.
func (r *pluginRegistry) healthCheck(ctx context.Context, in *pluginInstance) {
	rc, err := newRegistrationClient(in.socket)
	if err != nil {
		r.logf("registry: %v", err)
		r.setNext(in, retryInterval)
		return
	}
	defer func() { _ = rc.Close() }()
	info, err := rc.GetInfo(ctx, getInfoTimeout)
	if err != nil {
		r.mu.Lock()
		r.deregisterLocked(in, err.Error())
		in.nextCheck = time.Now().Add(retryInterval)
		r.mu.Unlock()
		return
	}
	if _, verr := validatePluginInfo(info, r.driverName); verr != nil || info.Endpoint != in.endpoint {
		reason := fmt.Sprintf("GetInfo answer changed: endpoint %s, validation: %v", info.Endpoint, verr)
		r.mu.Lock()
		r.deregisterLocked(in, reason)
		in.nextCheck = time.Now().Add(retryInterval)
		r.mu.Unlock()
		return
	}
	r.setNext(in, healthCheckInterval)
}

// endpointInUse refuses a second registration of an endpoint another instance already serves.
func (r *pluginRegistry) endpointInUse(self *pluginInstance, endpoint string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, other := range r.instances {
		if other != self && other.registered && other.endpoint == endpoint {
			return fmt.Errorf("endpoint %s is already registered through %s", endpoint, other.socket)
		}
	}
	return nil
}

func (r *pluginRegistry) setNext(in *pluginInstance, d time.Duration) {
	r.mu.Lock()
	in.nextCheck = time.Now().Add(d)
	r.mu.Unlock()
}

// deregisterLocked marks an instance unusable; r.mu must be held.
func (r *pluginRegistry) deregisterLocked(in *pluginInstance, reason string) {
	if !in.registered {
		return
	}
	in.registered = false
	if in.client != nil {
		_ = in.client.Close()
		in.client = nil
	}
	r.logf("registry: plugin %s at %s de-registered: %s", r.driverName, in.socket, reason)
}
