package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const testDriver = "mock-accel.example.com"

// fakeRegistration is a plugin's registration service with a fixed answer; it records the
// kubelet code's verdicts.
type fakeRegistration struct {
	registerapi.UnimplementedRegistrationServer
	info          *registerapi.PluginInfo
	mu            sync.Mutex
	notifications []*registerapi.RegistrationStatus
}

func (f *fakeRegistration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return f.info, nil
}

func (f *fakeRegistration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notifications = append(f.notifications, s)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func (f *fakeRegistration) verdicts() []*registerapi.RegistrationStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*registerapi.RegistrationStatus{}, f.notifications...)
}

// fakeDRA prepares every claim as one device "dev-<claim name>" with one CDI id, and writes
// the CDI spec for it, as a driver does; it records the claims of each call.
type fakeDRA struct {
	drav1.UnimplementedDRAPluginServer
	cdiDir string

	mu          sync.Mutex
	prepared    [][]string // claim UIDs per NodePrepareResources call
	unprepared  [][]string
	failPrepare string // a non-empty per-claim error for every claim
}

func cdiID(uid string) string { return testDriver + "/accel=" + uid + "-dev" }

func (f *fakeDRA) NodePrepareResources(_ context.Context, req *drav1.NodePrepareResourcesRequest) (*drav1.NodePrepareResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &drav1.NodePrepareResourcesResponse{Claims: map[string]*drav1.NodePrepareResourceResponse{}}
	var uids []string
	for _, c := range req.Claims {
		uids = append(uids, c.Uid)
		if f.failPrepare != "" {
			resp.Claims[c.Uid] = &drav1.NodePrepareResourceResponse{Error: f.failPrepare}
			continue
		}
		spec := fmt.Sprintf(`{"cdiVersion": "0.5.0", "kind": "%s/accel", "devices": [{"name": "%s-dev",
			"containerEdits": {"env": ["MOCK_ACCEL_CLAIM=%s"]}}]}`, testDriver, c.Uid, c.Name)
		if err := os.WriteFile(filepath.Join(f.cdiDir, testDriver+"-accel_"+c.Uid+".json"), []byte(spec), 0o644); err != nil {
			return nil, err
		}
		resp.Claims[c.Uid] = &drav1.NodePrepareResourceResponse{Devices: []*drav1.Device{{
			RequestNames: []string{"r"}, PoolName: "pool", DeviceName: "dev-" + c.Name,
			CdiDeviceIds: []string{cdiID(c.Uid)},
		}}}
	}
	f.prepared = append(f.prepared, uids)
	return resp, nil
}

func (f *fakeDRA) NodeUnprepareResources(_ context.Context, req *drav1.NodeUnprepareResourcesRequest) (*drav1.NodeUnprepareResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &drav1.NodeUnprepareResourcesResponse{Claims: map[string]*drav1.NodeUnprepareResourceResponse{}}
	var uids []string
	for _, c := range req.Claims {
		uids = append(uids, c.Uid)
		_ = os.Remove(filepath.Join(f.cdiDir, testDriver+"-accel_"+c.Uid+".json"))
		resp.Claims[c.Uid] = &drav1.NodeUnprepareResourceResponse{}
	}
	f.unprepared = append(f.unprepared, uids)
	return resp, nil
}

func (f *fakeDRA) calls() (prepared, unprepared [][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string{}, f.prepared...), append([][]string{}, f.unprepared...)
}

// serve starts a gRPC server on a Unix socket and stops it when the test ends.
func serve(t *testing.T, path string, register func(*grpc.Server)) {
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
}

type pluginFixture struct {
	root, regSock, endpoint, cdiDir string
	reg                             *fakeRegistration
	dra                             *fakeDRA
}

// startPlugin serves a DRA plugin (registration and v1 DRA service) under a short temporary
// root: Unix socket paths are limited to 108 bytes.
func startPlugin(t *testing.T, name string, versions ...string) *pluginFixture {
	t.Helper()
	root, err := os.MkdirTemp("", "fk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	f := &pluginFixture{
		root:     root,
		regSock:  filepath.Join(root, "plugins_registry", name+"-reg.sock"),
		endpoint: filepath.Join(root, "plugins", name, "dra.sock"),
		cdiDir:   filepath.Join(root, "cdi"),
	}
	if err := os.MkdirAll(f.cdiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.dra = &fakeDRA{cdiDir: f.cdiDir}
	serve(t, f.endpoint, func(s *grpc.Server) { drav1.RegisterDRAPluginServer(s, f.dra) })
	f.reg = &fakeRegistration{info: &registerapi.PluginInfo{
		Type: registerapi.DRAPlugin, Name: name, Endpoint: f.endpoint, SupportedVersions: versions,
	}}
	serve(t, f.regSock, func(s *grpc.Server) { registerapi.RegisterRegistrationServer(s, f.reg) })
	return f
}
