// state.go owns the fakelet's checkpoint: which pods had NodePrepareResources called for which
// claims, and which container files were written for them. Like the kubelet's DRA manager
// checkpoint it survives a fakelet restart, so pods deleted meanwhile are still unprepared
// and claims shared by several pods are unprepared only when the last one goes.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

const stateVersion = 1

// podRecord is one pod the fakelet has prepared claims for (or tried to).
type podRecord struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Claims    []claimRef `json:"claims"`
	Files     []string   `json:"files"`
}

type fakeletState struct {
	Version int                   `json:"version"`
	Pods    map[string]*podRecord `json:"pods"` // by pod UID
	path    string
}

func loadState(path string) (*fakeletState, error) {
	st := &fakeletState{Version: stateVersion, Pods: map[string]*podRecord{}, path: path}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", path, err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("parse checkpoint %s (delete it to start afresh): %w", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("checkpoint %s has version %d, want %d (delete it to start afresh)", path, st.Version, stateVersion)
	}
	if st.Pods == nil {
		st.Pods = map[string]*podRecord{}
	}
	st.path = path
	return st, nil
}

// save writes the checkpoint atomically (temp file in the same directory, then rename).
func (s *fakeletState) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.path, data)
}

// addClaims records that prepare is about to be called for claims of a pod.
func (s *fakeletState) addClaims(podUID, namespace, name string, claims []claimRef) {
	rec := s.Pods[podUID]
	if rec == nil {
		rec = &podRecord{Namespace: namespace, Name: name, Claims: []claimRef{}, Files: []string{}}
		s.Pods[podUID] = rec
	}
	for _, c := range claims {
		if !slices.Contains(rec.Claims, c) {
			rec.Claims = append(rec.Claims, c)
		}
	}
}

// claimsOnlyUsedBy returns the pod's claims that no other recorded pod uses: the ones to
// unprepare when this pod goes.
func (s *fakeletState) claimsOnlyUsedBy(podUID string) []claimRef {
	rec := s.Pods[podUID]
	if rec == nil {
		return nil
	}
	var out []claimRef
	for _, c := range rec.Claims {
		shared := false
		for uid, other := range s.Pods {
			if uid != podUID && slices.Contains(other.Claims, c) {
				shared = true
				break
			}
		}
		if !shared {
			out = append(out, c)
		}
	}
	return out
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file in %s: %w", dir, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	return nil
}
