package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A spec of the shape the driver writes: per-claim file, device names prefixed with the claim
// UID (digit first, hence 0.5.0), env, a read-only sysfs bind mount, a fully specified node.
const goodSpec = `{
  "cdiVersion": "0.5.0",
  "kind": "mock-accel.example.com/accel",
  "containerEdits": {"env": ["MOCK_ACCEL_DEVICES=mock0"]},
  "devices": [{
    "name": "0f1e2d3c-mock0",
    "containerEdits": {
      "env": ["MOCK_ACCEL_DEVICE=mock0", "MOCK_ACCEL_PCI=0000:11:00.0"],
      "mounts": [{"hostPath": "/sys/devices/mock0", "containerPath": "/sys/class/mock-accel/mock0", "options": ["ro", "bind"]}],
      "deviceNodes": [{"path": "/dev/mock0", "type": "c", "major": 240, "minor": 0}]
    }
  }]
}`

func writeSpec(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolveCDI(t *testing.T) {
	dir := t.TempDir()
	writeSpec(t, dir, "mock-accel.example.com-accel_0f1e2d3c.json", goodSpec)
	id := "mock-accel.example.com/accel=0f1e2d3c-mock0"

	edits, err := resolveCDI(dir, []string{id})
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	for _, want := range []string{"MOCK_ACCEL_DEVICES=mock0", "MOCK_ACCEL_DEVICE=mock0", "MOCK_ACCEL_PCI=0000:11:00.0"} {
		if !slices.Contains(edits.Env, want) {
			t.Errorf("env %q missing from %q", want, edits.Env)
		}
	}
	if len(edits.Mounts) != 1 || edits.Mounts[0].Destination != "/sys/class/mock-accel/mock0" || edits.Mounts[0].Source != "/sys/devices/mock0" {
		t.Errorf("mounts: %+v", edits.Mounts)
	}
	if len(edits.DeviceNodes) != 1 || edits.DeviceNodes[0].Path != "/dev/mock0" || edits.DeviceNodes[0].Major != 240 {
		t.Errorf("device nodes: %+v", edits.DeviceNodes)
	}
	if !slices.Equal(edits.CDIDevices, []string{id}) {
		t.Errorf("cdiDevices: %q", edits.CDIDevices)
	}

	none, err := resolveCDI(dir, nil)
	if err != nil || len(none.Env)+len(none.Mounts)+len(none.DeviceNodes)+len(none.CDIDevices) != 0 || none.Env == nil {
		t.Errorf("no ids: want empty non-nil edits, got %+v, %v", none, err)
	}
}

func TestResolveCDIUnresolved(t *testing.T) {
	dir := t.TempDir()
	writeSpec(t, dir, "a.json", goodSpec)
	_, err := resolveCDI(dir, []string{"mock-accel.example.com/accel=0f1e2d3c-mock0", "mock-accel.example.com/accel=gone"})
	var ce *cdiError
	if !errors.As(err, &ce) || !slices.Equal(ce.Unresolved, []string{"mock-accel.example.com/accel=gone"}) {
		t.Errorf("want the unresolved id reported, got %v", err)
	}
}

func TestResolveCDIRejectsBadSpecs(t *testing.T) {
	cases := map[string]string{
		"unknown field":                          strings.Replace(goodSpec, `"kind"`, `"bogus": 1, "kind"`, 1),
		"version too low for a digit-first name": strings.Replace(goodSpec, `"0.5.0"`, `"0.3.0"`, 1),
		"bad env":                                strings.Replace(goodSpec, `"MOCK_ACCEL_DEVICE=mock0"`, `"=mock0"`, 1),
	}
	for name, body := range cases {
		dir := t.TempDir()
		writeSpec(t, dir, "bad.json", body)
		_, err := resolveCDI(dir, nil)
		var ce *cdiError
		if !errors.As(err, &ce) || len(ce.SpecErrors[filepath.Join(dir, "bad.json")]) == 0 {
			t.Errorf("%s: want a spec error for bad.json, got %v", name, err)
		}
	}

	// Two files defining the same device conflict; the runtime could not pick one.
	dir := t.TempDir()
	writeSpec(t, dir, "a.json", goodSpec)
	writeSpec(t, dir, "b.json", goodSpec)
	if _, err := resolveCDI(dir, nil); err == nil || !strings.Contains(err.Error(), "conflicting device") {
		t.Errorf("duplicate device: got %v", err)
	}
}
