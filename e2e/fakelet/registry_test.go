package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/utils/ptr"
)

// fakeRegistration is a plugin's registration service with a configurable answer.
type fakeRegistration struct {
	registerapi.UnimplementedRegistrationServer
	mu            sync.Mutex
	info          *registerapi.PluginInfo
	failGetInfo   bool
	getInfoCalls  int
	notifications []*registerapi.RegistrationStatus
}

func (f *fakeRegistration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getInfoCalls++
	if f.failGetInfo {
		return nil, status.Error(codes.Unavailable, "shutting down")
	}
	return f.info, nil
}

func (f *fakeRegistration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notifications = append(f.notifications, s)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func (f *fakeRegistration) registeredFlags() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []bool
	for _, n := range f.notifications {
		out = append(out, n.PluginRegistered)
	}
	return out
}

// fakeDRAv1 prepares every claim as one device named after the claim.
type fakeDRAv1 struct {
	drav1.UnimplementedDRAPluginServer
}

func (fakeDRAv1) NodePrepareResources(_ context.Context, req *drav1.NodePrepareResourcesRequest) (*drav1.NodePrepareResourcesResponse, error) {
	resp := &drav1.NodePrepareResourcesResponse{Claims: map[string]*drav1.NodePrepareResourceResponse{}}
	for _, c := range req.Claims {
		resp.Claims[c.Uid] = &drav1.NodePrepareResourceResponse{Devices: []*drav1.Device{{
			RequestNames: []string{"r"}, PoolName: "pool", DeviceName: "dev-" + c.Name,
			CdiDeviceIds: []string{"mock-accel.example.com/accel=" + c.Uid}, ShareId: ptr.To("share-1"),
		}}}
	}
	return resp, nil
}

func (fakeDRAv1) NodeUnprepareResources(_ context.Context, req *drav1.NodeUnprepareResourcesRequest) (*drav1.NodeUnprepareResourcesResponse, error) {
	resp := &drav1.NodeUnprepareResourcesResponse{Claims: map[string]*drav1.NodeUnprepareResourceResponse{}}
	for _, c := range req.Claims {
		if c.Name == "broken" {
			resp.Claims[c.Uid] = &drav1.NodeUnprepareResourceResponse{Error: "cannot reset register"}
		} else {
			resp.Claims[c.Uid] = &drav1.NodeUnprepareResourceResponse{}
		}
	}
	return resp, nil
}

// fakeDRAv1beta1 answers without an entry for claims named "lost".
type fakeDRAv1beta1 struct {
	drav1beta1.UnimplementedDRAPluginServer
}

func (fakeDRAv1beta1) NodePrepareResources(_ context.Context, req *drav1beta1.NodePrepareResourcesRequest) (*drav1beta1.NodePrepareResourcesResponse, error) {
	resp := &drav1beta1.NodePrepareResourcesResponse{Claims: map[string]*drav1beta1.NodePrepareResourceResponse{}}
	for _, c := range req.Claims {
		if c.Name == "lost" {
			continue
		}
		resp.Claims[c.Uid] = &drav1beta1.NodePrepareResourceResponse{Devices: []*drav1beta1.Device{{
			PoolName: "pool", DeviceName: "dev-" + c.Name,
		}}}
	}
	return resp, nil
}

// serve starts a gRPC server on a Unix socket and stops it when the test ends.
func serve(t *testing.T, path string, register func(*grpc.Server)) *grpc.Server {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return srv
}

type pluginFixture struct {
	root, regDir, regSock, endpoint string
	reg                             *fakeRegistration
	regSrv                          *grpc.Server
}

func startPlugin(t *testing.T, versions ...string) *pluginFixture {
	t.Helper()
	// Short paths: Unix socket paths are limited to 108 bytes.
	root, err := os.MkdirTemp("", "fk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	f := &pluginFixture{
		root:     root,
		regDir:   filepath.Join(root, "plugins_registry"),
		endpoint: filepath.Join(root, "plugins", testDriver, "dra.sock"),
	}
	f.regSock = filepath.Join(f.regDir, testDriver+"-reg.sock")
	serve(t, f.endpoint, func(s *grpc.Server) {
		drav1.RegisterDRAPluginServer(s, fakeDRAv1{})
		drav1beta1.RegisterDRAPluginServer(s, fakeDRAv1beta1{})
	})
	f.reg = &fakeRegistration{info: &registerapi.PluginInfo{
		Type: registerapi.DRAPlugin, Name: testDriver, Endpoint: f.endpoint, SupportedVersions: versions,
	}}
	f.startRegistration(t)
	return f
}

func (f *pluginFixture) startRegistration(t *testing.T) {
	f.regSrv = serve(t, f.regSock, func(s *grpc.Server) { registerapi.RegisterRegistrationServer(s, f.reg) })
}

func TestValidatePluginInfo(t *testing.T) {
	f := startPlugin(t, serviceV1)
	ok := pluginInfo{Type: "DRAPlugin", Name: testDriver, Endpoint: f.endpoint, SupportedVersions: []string{"v1beta1.DRAPlugin", "v1.DRAPlugin"}}
	if got, err := validatePluginInfo(ok, testDriver); err != nil || got != serviceV1beta1 {
		t.Errorf("want the plugin's first supported entry v1beta1.DRAPlugin, got %q, %v", got, err)
	}
	ok.SupportedVersions = []string{"v1alpha1.DRAResourceHealth", "v1.DRAPlugin", "v1beta1.DRAPlugin"}
	if got, err := validatePluginInfo(ok, testDriver); err != nil || got != serviceV1 {
		t.Errorf("want v1.DRAPlugin after an unknown service, got %q, %v", got, err)
	}
	bad := map[string]func(*pluginInfo){
		"is not \"DRAPlugin\"":  func(i *pluginInfo) { i.Type = "CSIPlugin" },
		"does not match":        func(i *pluginInfo) { i.Name = "other.example.com" },
		"endpoint is empty":     func(i *pluginInfo) { i.Endpoint = "" },
		"no such file":          func(i *pluginInfo) { i.Endpoint = filepath.Join(f.root, "missing.sock") },
		"is not a socket":       func(i *pluginInfo) { i.Endpoint = f.root },
		"no supported_versions": func(i *pluginInfo) { i.SupportedVersions = nil },
		"is supported":          func(i *pluginInfo) { i.SupportedVersions = []string{"v1alpha3.DRAPlugin", "1.0.0"} },
	}
	for want, mutate := range bad {
		info := ok
		mutate(&info)
		if _, err := validatePluginInfo(info, testDriver); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want error containing %q, got %v", want, err)
		}
	}
}

func TestRegistryLifecycle(t *testing.T) {
	f := startPlugin(t, serviceV1, serviceV1beta1)
	// A hidden socket must be ignored, as the kubelet ignores names starting with ".".
	hidden := &fakeRegistration{info: &registerapi.PluginInfo{Type: "DRAPlugin", Name: "intruder"}}
	serve(t, filepath.Join(f.regDir, ".hidden.sock"), func(s *grpc.Server) { registerapi.RegisterRegistrationServer(s, hidden) })

	r := newPluginRegistry(f.regDir, testDriver, 0, t.Logf)
	wipes, registrations := 0, 0
	r.wipe = func(context.Context) error { wipes++; return nil }
	r.onRegistered = func() { registrations++ }
	ctx := context.Background()

	r.scan(ctx)
	if got := f.reg.registeredFlags(); !slices.Equal(got, []bool{true}) || registrations != 1 {
		t.Fatalf("after first scan: notifications %v, onRegistered %d", got, registrations)
	}
	if hidden.getInfoCalls != 0 {
		t.Errorf("hidden socket was called %d times", hidden.getInfoCalls)
	}
	client, err := r.client()
	if err != nil || client.service != serviceV1 {
		t.Fatalf("client: %v, %v", client, err)
	}
	resp, err := client.Prepare(ctx, []claimRef{{"ns", "c1", "u1"}})
	if err != nil {
		t.Fatal(err)
	}
	d := resp["u1"].Devices
	if len(d) != 1 || d[0].DeviceName != "dev-c1" || d[0].ShareID == nil || *d[0].ShareID != "share-1" || !slices.Equal(d[0].RequestNames, []string{"r"}) {
		t.Errorf("prepare answer: %+v", resp)
	}

	// Re-scans while registered do nothing new.
	r.scan(ctx)
	if got := f.reg.registeredFlags(); len(got) != 1 {
		t.Errorf("re-scan notified again: %v", got)
	}

	// The plugin goes away: de-registered, and with a zero wipe delay its slices go at once.
	f.regSrv.Stop()
	if err := os.Remove(f.regSock); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	r.scan(ctx)
	if _, err := r.client(); err == nil {
		t.Error("client still available after the socket was removed")
	}
	if wipes != 1 {
		t.Errorf("wipes = %d, want 1", wipes)
	}

	// It comes back on the same path: registered again, and nothing more is wiped.
	f.startRegistration(t)
	r.scan(ctx)
	if _, err := r.client(); err != nil {
		t.Errorf("not registered again: %v", err)
	}
	if got := f.reg.registeredFlags(); !slices.Equal(got, []bool{true, true}) || registrations != 2 || wipes != 1 {
		t.Errorf("after return: notifications %v, onRegistered %d, wipes %d", got, registrations, wipes)
	}
}

func TestRegistryWipeWaitsForDelay(t *testing.T) {
	f := startPlugin(t, serviceV1)
	r := newPluginRegistry(f.regDir, testDriver, time.Hour, t.Logf)
	wipes := 0
	r.wipe = func(context.Context) error { wipes++; return nil }
	ctx := context.Background()
	r.scan(ctx)

	// A failing health check de-registers the plugin even though its socket stays.
	f.reg.mu.Lock()
	f.reg.failGetInfo = true
	f.reg.mu.Unlock()
	for _, in := range r.instances {
		in.nextCheck = time.Time{}
	}
	r.scan(ctx)
	if _, err := r.client(); err == nil {
		t.Fatal("still registered after GetInfo failed")
	}
	if wipes != 0 || r.wipeAt.IsZero() {
		t.Fatalf("wipe should be pending, not done: wipes %d, wipeAt %v", wipes, r.wipeAt)
	}

	// Back before the delay: the pending wipe is cancelled.
	f.reg.mu.Lock()
	f.reg.failGetInfo = false
	f.reg.mu.Unlock()
	for _, in := range r.instances {
		in.nextCheck = time.Time{}
	}
	r.scan(ctx)
	if _, err := r.client(); err != nil || !r.wipeAt.IsZero() || wipes != 0 {
		t.Errorf("after return: client err %v, wipeAt %v, wipes %d", err, r.wipeAt, wipes)
	}
}

func TestRegistryRejectsWrongDriver(t *testing.T) {
	f := startPlugin(t, serviceV1)
	r := newPluginRegistry(f.regDir, "other.example.com", 0, t.Logf)
	r.scan(context.Background())
	if _, err := r.client(); err == nil {
		t.Error("a plugin of another driver was accepted")
	}
	f.reg.mu.Lock()
	defer f.reg.mu.Unlock()
	if len(f.reg.notifications) != 1 || f.reg.notifications[0].PluginRegistered || !strings.Contains(f.reg.notifications[0].Error, "does not match") {
		t.Errorf("want one negative notification with the reason, got %v", f.reg.notifications)
	}
}

func TestDRAClientV1beta1(t *testing.T) {
	f := startPlugin(t, serviceV1beta1)
	c, err := newDRAClient(f.endpoint, serviceV1beta1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	resp, err := c.Prepare(context.Background(), []claimRef{{"ns", "a", "u1"}, {"ns", "lost", "u2"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp) != 1 || resp["u1"].Devices[0].DeviceName != "dev-a" || resp["u1"].Devices[0].ShareID != nil {
		t.Errorf("v1beta1 answer: %+v", resp)
	}
	if _, err := c.Unprepare(context.Background(), []claimRef{{"ns", "a", "u1"}}); status.Code(errors.Unwrap(err)) != codes.Unimplemented {
		t.Errorf("unprepare on a server without it: want Unimplemented, got %v", err)
	}
}

func TestOneShotExitCodes(t *testing.T) {
	f := startPlugin(t, serviceV1, serviceV1beta1)
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"register", []string{"register", "--socket", f.regSock}, exitOK},
		{"register wrong driver", []string{"register", "--socket", f.regSock, "--driver-name", "x.example.com"}, exitFailure},
		{"register no socket", []string{"register", "--socket", filepath.Join(f.root, "nope.sock")}, exitFailure},
		{"prepare", []string{"prepare", "--endpoint", f.endpoint, "--claim", "ns/a/u1"}, exitOK},
		{"prepare missing entry", []string{"prepare", "--endpoint", f.endpoint, "--api", "v1beta1", "--claim", "ns/lost/u2"}, exitFailure},
		{"unprepare", []string{"unprepare", "--endpoint", f.endpoint, "--claim", "ns/a/u1", "--claim", "ns/b/u2"}, exitOK},
		{"unprepare claim error", []string{"unprepare", "--endpoint", f.endpoint, "--claim", "ns/broken/u3"}, exitFailure},
		{"prepare bad claim", []string{"prepare", "--endpoint", f.endpoint, "--claim", "ns/a"}, exitUsage},
		{"prepare bad api", []string{"prepare", "--endpoint", f.endpoint, "--claim", "ns/a/u", "--api", "v2"}, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
	}
	for _, tc := range cases {
		if got := dispatch(tc.args); got != tc.want {
			t.Errorf("%s: exit %d, want %d", tc.name, got, tc.want)
		}
	}
}
