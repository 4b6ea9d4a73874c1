package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestRegisterOnceNegotiatesLikeTheKubelet(t *testing.T) {
	// The kubelet's handler takes the first entry of the plugin's list that it supports.
	f := startPlugin(t, testDriver, "v1alpha1.DRAResourceHealth", "v1beta1.DRAPlugin", "v1.DRAPlugin")
	out := registerOnce(f.regSock, testDriver)
	if !out.Registered || out.Error != "" {
		t.Fatalf("not registered: %+v", out)
	}
	if out.Type != "DRAPlugin" || out.Name != testDriver || out.Endpoint != f.endpoint {
		t.Errorf("plugin info: %+v", out)
	}
	if out.ChosenVersion != "v1beta1.DRAPlugin" {
		t.Errorf("chosen version %q, want the plugin's first supported entry v1beta1.DRAPlugin", out.ChosenVersion)
	}
	if v := f.reg.verdicts(); len(v) != 1 || !v[0].PluginRegistered {
		t.Errorf("want one NotifyRegistrationStatus(true), got %v", v)
	}
}

func TestRegisterOnceRefusals(t *testing.T) {
	t.Parallel() // a missing socket costs the kubelet's 10 s dial timeout
	f := startPlugin(t, testDriver, "v1alpha3.DRAPlugin")
	out := registerOnce(f.regSock, testDriver)
	if out.Registered || !strings.Contains(out.Error, "none of services supported by the plugin") {
		t.Errorf("unsupported versions: want a refusal naming the versions, got %+v", out)
	}
	if v := f.reg.verdicts(); len(v) != 1 || v[0].PluginRegistered || v[0].Error == "" {
		t.Errorf("want one NotifyRegistrationStatus(false) with the reason, got %v", v)
	}

	other := startPlugin(t, "other.example.com", "v1.DRAPlugin")
	out = registerOnce(other.regSock, testDriver)
	if !out.Registered || !strings.Contains(out.Error, `is not the expected driver`) {
		t.Errorf("other driver: the kubelet accepts it, the command must report the mismatch: %+v", out)
	}

	out = registerOnce(filepath.Join(f.root, "missing.sock"), testDriver)
	if out.Registered || !strings.Contains(out.Error, "dial failed") {
		t.Errorf("missing socket: %+v", out)
	}
}

func TestOneShotExitCodes(t *testing.T) {
	t.Parallel() // a missing socket costs the kubelet's 10 s dial timeout
	f := startPlugin(t, testDriver, "v1.DRAPlugin", "v1beta1.DRAPlugin")
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"register", []string{"register", "--socket", f.regSock}, exitOK},
		{"register wrong driver", []string{"register", "--socket", f.regSock, "--driver-name", "x.example.com"}, exitFailure},
		{"register no socket", []string{"register", "--socket", filepath.Join(f.root, "nope.sock")}, exitFailure},
		{"register without --socket", []string{"register"}, exitUsage},
		{"cdi-resolve nothing", []string{"cdi-resolve", "--cdi-dir", f.cdiDir}, exitOK},
		{"cdi-resolve unknown id", []string{"cdi-resolve", "--cdi-dir", f.cdiDir, "--id", testDriver + "/accel=nope"}, exitFailure},
		{"removed prepare one-shot", []string{"prepare", "--endpoint", f.endpoint}, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
	}
	for _, tc := range cases {
		if got := dispatch(tc.args); got != tc.want {
			t.Errorf("%s: exit %d, want %d", tc.name, got, tc.want)
		}
	}
	registered := 0
	for _, v := range f.reg.verdicts() {
		if v.PluginRegistered {
			registered++
		}
	}
	if registered != 2 {
		t.Errorf("want NotifyRegistrationStatus(true) for the two register runs on %s, got %d", f.regSock, registered)
	}
}
