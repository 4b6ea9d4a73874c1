// cdi.go resolves CDI device ids the way a container runtime does, with the upstream
// tags.cncf.io/container-device-interface library: load the spec directory strictly, fail on
// any spec error there, and inject exactly the given ids into an empty OCI spec. What the
// container would receive (env, mounts, device nodes) is read back from that spec.
package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// containerEdits is what one container receives from CDI; it is the JSON written to
// <containers-dir>/<namespace>_<pod>_<container>.json and to the pod annotation.
type containerEdits struct {
	Env         []string          `json:"env"`
	Mounts      []oci.Mount       `json:"mounts"`
	DeviceNodes []oci.LinuxDevice `json:"deviceNodes"`
	CDIDevices  []string          `json:"cdiDevices"`
}

// cdiError carries what went wrong in CDI resolution, for JSON output.
type cdiError struct {
	SpecErrors map[string][]string `json:"specErrors,omitempty"`
	Unresolved []string            `json:"unresolved,omitempty"`
	Err        string              `json:"error"`
}

func (e *cdiError) Error() string { return e.Err }

// loadCDICache scans dir once (no background refresh) and fails on any spec error in it:
// the spec files there are written by the driver under test, so a bad one is its bug.
func loadCDICache(dir string) (*cdi.Cache, error) {
	// NewCache always returns a usable cache; load problems are reported per file by
	// GetErrors. The cache only covers dir, so every error concerns a file in it.
	cache, _ := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	specErrs := map[string][]string{}
	for path, errs := range cache.GetErrors() {
		for _, e := range errs {
			specErrs[path] = append(specErrs[path], e.Error())
		}
	}
	if len(specErrs) > 0 {
		var parts []string
		for _, p := range sortedKeys(specErrs) {
			parts = append(parts, p+": "+strings.Join(specErrs[p], "; "))
		}
		return nil, &cdiError{SpecErrors: specErrs, Err: "invalid CDI spec files in " + dir + ": " + strings.Join(parts, " | ")}
	}
	return cache, nil
}

// injectCDI injects exactly ids into a fresh, empty OCI spec and returns what it gained.
// cache may be nil when ids is empty.
func injectCDI(cache *cdi.Cache, ids []string) (containerEdits, error) {
	spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	out := containerEdits{Env: []string{}, Mounts: []oci.Mount{}, DeviceNodes: []oci.LinuxDevice{}, CDIDevices: slices.Clone(ids)}
	if out.CDIDevices == nil {
		out.CDIDevices = []string{}
	}
	if len(ids) == 0 {
		return out, nil
	}
	if cache == nil {
		return out, &cdiError{Unresolved: slices.Clone(ids), Err: "no CDI cache to resolve " + strings.Join(ids, ", ")}
	}
	unresolved, err := cache.InjectDevices(spec, ids...)
	if err != nil {
		return out, &cdiError{Unresolved: unresolved, Err: fmt.Sprintf("CDI injection of %q: %v", ids, err)}
	}
	out.Env = append(out.Env, spec.Process.Env...)
	out.Mounts = append(out.Mounts, spec.Mounts...)
	out.DeviceNodes = append(out.DeviceNodes, spec.Linux.Devices...)
	return out, nil
}

// resolveCDI is loadCDICache followed by injectCDI.
func resolveCDI(dir string, ids []string) (containerEdits, error) {
	cache, err := loadCDICache(dir)
	if err != nil {
		return containerEdits{}, err
	}
	return injectCDI(cache, ids)
}

// cdiErrorJSON turns any error into the cdiError shape for JSON output.
func cdiErrorJSON(err error) *cdiError {
	var ce *cdiError
	if errors.As(err, &ce) {
		return ce
	}
	return &cdiError{Err: err.Error()}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
