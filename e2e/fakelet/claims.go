// claims.go is the pure part of the kubelet's claim handling: which claims a pod uses, whether
// a claim is ready to be prepared for the pod, whether a plugin's prepare answer is consistent
// with the claim's allocation, and which CDI ids each container receives. No I/O here.
package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
)

// errNotYet marks a condition that is expected to resolve by itself (a controller has not
// caught up yet); the pod is retried quickly and no Event is recorded at first.
var errNotYet = errors.New("not yet")

// baseRequestName strips a firstAvailable sub-request: "gpu/large" -> "gpu".
func baseRequestName(request string) string {
	base, _, _ := strings.Cut(request, "/")
	return base
}

// podClaimName resolves the ResourceClaim name of one entry of pod.spec.resourceClaims, like
// the kubelet's resourceclaim.Name: directly, or through pod.status.resourceClaimStatuses for
// a template. needed=false means the template produced no claim (nothing to prepare);
// fromTemplate says the claim must be owned by the pod.
func podClaimName(pod *corev1.Pod, pc *corev1.PodResourceClaim) (name string, needed, fromTemplate bool, err error) {
	switch {
	case pc.ResourceClaimName != nil:
		return *pc.ResourceClaimName, true, false, nil
	case pc.ResourceClaimTemplateName != nil:
		for _, st := range pod.Status.ResourceClaimStatuses {
			if st.Name == pc.Name {
				if st.ResourceClaimName == nil {
					return "", false, true, nil
				}
				return *st.ResourceClaimName, true, true, nil
			}
		}
		return "", false, true, fmt.Errorf("pod claim %q: no entry in status.resourceClaimStatuses yet: %w", pc.Name, errNotYet)
	default:
		return "", false, false, fmt.Errorf("pod claim %q sets neither resourceClaimName nor resourceClaimTemplateName", pc.Name)
	}
}

// checkClaimForPod applies the kubelet's checks before prepare: a generated claim must be
// owned by the pod, allocated, and reserved for the pod.
func checkClaimForPod(claim *resourcev1.ResourceClaim, pod *corev1.Pod, fromTemplate bool) error {
	id := claim.Namespace + "/" + claim.Name
	if fromTemplate {
		owned := false
		for _, o := range claim.OwnerReferences {
			if o.UID == pod.UID && o.Controller != nil && *o.Controller {
				owned = true
			}
		}
		if !owned {
			return fmt.Errorf("claim %s was not created for pod %s/%s (no controller owner reference to it)", id, pod.Namespace, pod.Name)
		}
	}
	if claim.Status.Allocation == nil {
		return fmt.Errorf("claim %s is not allocated: %w", id, errNotYet)
	}
	if !isReservedFor(claim, pod.UID) {
		return fmt.Errorf("claim %s is not reserved for pod %s/%s (uid %s): %w", id, pod.Namespace, pod.Name, pod.UID, errNotYet)
	}
	return nil
}

func isReservedFor(claim *resourcev1.ResourceClaim, podUID types.UID) bool {
	for _, r := range claim.Status.ReservedFor {
		if r.Resource == "pods" && r.APIGroup == "" && r.UID == podUID {
			return true
		}
	}
	return false
}

// claimDrivers lists the drivers of a claim's allocation results, in first-seen order.
func claimDrivers(claim *resourcev1.ResourceClaim) []string {
	var out []string
	if claim.Status.Allocation == nil {
		return out
	}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if !slices.Contains(out, r.Driver) {
			out = append(out, r.Driver)
		}
	}
	return out
}

type poolDevice struct{ pool, device string }

// checkPrepareResponse asserts what the kubelet (and a strict reading of the contract)
// expects of a NodePrepareResources answer for the given claims of one driver:
//   - every claim has an entry, without error;
//   - every returned device has a pool and a device name, and (pool, device) is one of the
//     claim's allocation results for this driver;
//   - request_names are base names (no "/sub") and each names a request that allocated that
//     device; when non-empty they cover every request that allocated it;
//   - every device allocated to the claim for this driver is returned.
//
// Extra entries for claims not asked about are reported too.
func checkPrepareResponse(driver string, claims []*resourcev1.ResourceClaim, resp map[string]prepareResult) error {
	var errs []error
	asked := map[string]bool{}
	for _, claim := range claims {
		uid := string(claim.UID)
		asked[uid] = true
		id := claim.Namespace + "/" + claim.Name
		res, ok := resp[uid]
		if !ok {
			errs = append(errs, fmt.Errorf("claim %s (uid %s): no entry in the prepare response", id, uid))
			continue
		}
		if res.Error != "" {
			errs = append(errs, fmt.Errorf("claim %s: plugin error: %s", id, res.Error))
			continue
		}
		// Requests (base names) that allocated each device of this driver.
		allocated := map[poolDevice][]string{}
		if claim.Status.Allocation != nil {
			for _, r := range claim.Status.Allocation.Devices.Results {
				if r.Driver != driver {
					continue
				}
				k := poolDevice{r.Pool, r.Device}
				if b := baseRequestName(r.Request); !slices.Contains(allocated[k], b) {
					allocated[k] = append(allocated[k], b)
				}
			}
		}
		returned := map[poolDevice]bool{}
		for _, d := range res.Devices {
			k := poolDevice{d.PoolName, d.DeviceName}
			if d.PoolName == "" || d.DeviceName == "" {
				errs = append(errs, fmt.Errorf("claim %s: device with empty pool_name or device_name: %+v", id, d))
				continue
			}
			returned[k] = true
			reqs, ok := allocated[k]
			if !ok {
				errs = append(errs, fmt.Errorf("claim %s: returned device %s/%s is not among its allocation results for driver %s", id, d.PoolName, d.DeviceName, driver))
				continue
			}
			for _, n := range d.RequestNames {
				if strings.Contains(n, "/") {
					errs = append(errs, fmt.Errorf("claim %s: device %s/%s: request name %q is not a base name", id, d.PoolName, d.DeviceName, n))
				} else if !slices.Contains(reqs, n) {
					errs = append(errs, fmt.Errorf("claim %s: device %s/%s: request name %q did not allocate it (allocated by %q)", id, d.PoolName, d.DeviceName, n, reqs))
				}
			}
			if len(d.RequestNames) > 0 {
				for _, want := range reqs {
					if !slices.Contains(d.RequestNames, want) {
						errs = append(errs, fmt.Errorf("claim %s: device %s/%s: request_names %q miss request %q", id, d.PoolName, d.DeviceName, d.RequestNames, want))
					}
				}
			}
		}
		for k := range allocated {
			if !returned[k] {
				errs = append(errs, fmt.Errorf("claim %s: allocated device %s/%s is missing from the prepare response", id, k.pool, k.device))
			}
		}
	}
	for uid := range resp {
		if !asked[uid] {
			errs = append(errs, fmt.Errorf("prepare response has an entry for claim uid %s that was not requested", uid))
		}
	}
	return errors.Join(errs...)
}

// allCDIIDs lists every CDI id of the prepared devices in order, without duplicates.
func allCDIIDs(results map[string]prepareResult) []string {
	var uids []string
	for uid := range results {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	out := []string{}
	for _, uid := range uids {
		for _, d := range results[uid].Devices {
			for _, id := range d.CDIDeviceIDs {
				if !slices.Contains(out, id) {
					out = append(out, id)
				}
			}
		}
	}
	return out
}

// containerCDIIDs lists the CDI ids one container receives, as the kubelet computes them: for
// each entry of container.resources.claims, the devices of the referenced pod claim, limited
// to the named request when one is given (a device with empty request_names serves every
// request). prepared maps pod-claim name -> that claim's prepared devices.
func containerCDIIDs(c *corev1.Container, prepared map[string][]preparedDevice) []string {
	out := []string{}
	for _, ref := range c.Resources.Claims {
		for _, d := range prepared[ref.Name] {
			if ref.Request != "" && len(d.RequestNames) > 0 && !slices.Contains(d.RequestNames, baseRequestName(ref.Request)) {
				continue
			}
			for _, id := range d.CDIDeviceIDs {
				if !slices.Contains(out, id) {
					out = append(out, id)
				}
			}
		}
	}
	return out
}
