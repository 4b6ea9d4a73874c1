package main

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

const testDriver = "mock-accel.example.com"

func TestBaseRequestName(t *testing.T) {
	for in, want := range map[string]string{
		"gpu":       "gpu",
		"gpu/large": "gpu",
		"a/b/c":     "a",
		"":          "",
	} {
		if got := baseRequestName(in); got != want {
			t.Errorf("baseRequestName(%q) = %q, want %q", in, got, want)
		}
	}
}

func mkPod(claims ...corev1.PodResourceClaim) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "pod-uid"},
		Spec:       corev1.PodSpec{ResourceClaims: claims},
	}
}

func TestPodClaimName(t *testing.T) {
	direct := corev1.PodResourceClaim{Name: "a", ResourceClaimName: ptr.To("claim-a")}
	tmpl := corev1.PodResourceClaim{Name: "t", ResourceClaimTemplateName: ptr.To("tmpl")}
	neither := corev1.PodResourceClaim{Name: "x"}

	pod := mkPod(direct, tmpl, neither)
	name, needed, fromTemplate, err := podClaimName(pod, &pod.Spec.ResourceClaims[0])
	if err != nil || !needed || fromTemplate || name != "claim-a" {
		t.Errorf("direct: got %q needed=%t fromTemplate=%t err=%v", name, needed, fromTemplate, err)
	}

	_, _, _, err = podClaimName(pod, &pod.Spec.ResourceClaims[1])
	if !errors.Is(err, errNotYet) {
		t.Errorf("template without status entry: want errNotYet, got %v", err)
	}

	pod.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "t", ResourceClaimName: ptr.To("p-t-x7k2q")}}
	name, needed, fromTemplate, err = podClaimName(pod, &pod.Spec.ResourceClaims[1])
	if err != nil || !needed || !fromTemplate || name != "p-t-x7k2q" {
		t.Errorf("template: got %q needed=%t fromTemplate=%t err=%v", name, needed, fromTemplate, err)
	}

	pod.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "t"}}
	_, needed, _, err = podClaimName(pod, &pod.Spec.ResourceClaims[1])
	if err != nil || needed {
		t.Errorf("template with no claim needed: needed=%t err=%v", needed, err)
	}

	_, _, _, err = podClaimName(pod, &pod.Spec.ResourceClaims[2])
	if err == nil || errors.Is(err, errNotYet) {
		t.Errorf("neither name nor template: want a hard error, got %v", err)
	}
}

type result struct{ request, driver, pool, device string }

func mkClaim(uid string, results ...result) *resourcev1.ResourceClaim {
	c := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c-" + uid, UID: types.UID(uid)}}
	if len(results) > 0 {
		c.Status.Allocation = &resourcev1.AllocationResult{}
		for _, r := range results {
			c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results,
				resourcev1.DeviceRequestAllocationResult{Request: r.request, Driver: r.driver, Pool: r.pool, Device: r.device})
		}
	}
	return c
}

func TestCheckClaimForPod(t *testing.T) {
	pod := mkPod()
	claim := mkClaim("u1", result{"r", testDriver, "node-a", "pf-0"})

	if err := checkClaimForPod(mkClaim("u0"), pod, false); !errors.Is(err, errNotYet) || !strings.Contains(err.Error(), "not allocated") {
		t.Errorf("unallocated: got %v", err)
	}
	if err := checkClaimForPod(claim, pod, false); !errors.Is(err, errNotYet) || !strings.Contains(err.Error(), "not reserved") {
		t.Errorf("unreserved: got %v", err)
	}
	claim.Status.ReservedFor = []resourcev1.ResourceClaimConsumerReference{{Resource: "pods", Name: "other", UID: "other-uid"}}
	if err := checkClaimForPod(claim, pod, false); !errors.Is(err, errNotYet) {
		t.Errorf("reserved for another pod: got %v", err)
	}
	claim.Status.ReservedFor = append(claim.Status.ReservedFor, resourcev1.ResourceClaimConsumerReference{Resource: "pods", Name: "p", UID: "pod-uid"})
	if err := checkClaimForPod(claim, pod, false); err != nil {
		t.Errorf("allocated and reserved: got %v", err)
	}
	if err := checkClaimForPod(claim, pod, true); err == nil || errors.Is(err, errNotYet) {
		t.Errorf("template claim without owner: want a hard error, got %v", err)
	}
	claim.OwnerReferences = []metav1.OwnerReference{{Kind: "Pod", Name: "p", UID: "pod-uid", Controller: ptr.To(true)}}
	if err := checkClaimForPod(claim, pod, true); err != nil {
		t.Errorf("template claim owned by the pod: got %v", err)
	}
}

func dev(pool, device string, requests ...string) preparedDevice {
	return preparedDevice{RequestNames: requests, PoolName: pool, DeviceName: device, CDIDeviceIDs: []string{"mock-accel.example.com/accel=" + device}}
}

func TestCheckPrepareResponse(t *testing.T) {
	// A claim with a first-available sub-request and a plain one, plus a device of another
	// driver that the answer must not mention.
	claim := mkClaim("u1",
		result{"pf/big", testDriver, "node-a-0", "pf-0"},
		result{"vf", testDriver, "node-a-0", "vf-1"},
		result{"net", "other.example.com", "p", "eth0"},
	)
	claims := []*resourcev1.ResourceClaim{claim}
	good := func() map[string]prepareResult {
		return map[string]prepareResult{"u1": {Devices: []preparedDevice{dev("node-a-0", "pf-0", "pf"), dev("node-a-0", "vf-1", "vf")}}}
	}
	if err := checkPrepareResponse(testDriver, claims, good()); err != nil {
		t.Fatalf("consistent answer rejected: %v", err)
	}
	emptyNames := good()
	emptyNames["u1"].Devices[1].RequestNames = nil
	if err := checkPrepareResponse(testDriver, claims, emptyNames); err != nil {
		t.Errorf("empty request_names (= all requests) rejected: %v", err)
	}

	cases := map[string]struct {
		mutate func(map[string]prepareResult)
		want   string
	}{
		"missing entry":        {func(m map[string]prepareResult) { delete(m, "u1") }, "no entry"},
		"plugin error":         {func(m map[string]prepareResult) { m["u1"] = prepareResult{Error: "boom"} }, "plugin error: boom"},
		"unallocated device":   {func(m map[string]prepareResult) { m["u1"].Devices[0].DeviceName = "pf-9" }, "not among its allocation results"},
		"other driver device":  {func(m map[string]prepareResult) { m["u1"].Devices[0] = dev("p", "eth0", "net") }, "not among its allocation results"},
		"sub-request name":     {func(m map[string]prepareResult) { m["u1"].Devices[0].RequestNames = []string{"pf/big"} }, "not a base name"},
		"wrong request name":   {func(m map[string]prepareResult) { m["u1"].Devices[0].RequestNames = []string{"vf"} }, `request name "vf" did not allocate it`},
		"device left out":      {func(m map[string]prepareResult) { r := m["u1"]; r.Devices = r.Devices[:1]; m["u1"] = r }, "vf-1 is missing"},
		"empty pool":           {func(m map[string]prepareResult) { m["u1"].Devices[0].PoolName = "" }, "empty pool_name"},
		"unrequested claim":    {func(m map[string]prepareResult) { m["u2"] = prepareResult{} }, "not requested"},
		"device returned once": {func(m map[string]prepareResult) { m["u1"].Devices[1].RequestNames = []string{"pf"} }, "did not allocate it"},
	}
	for name, tc := range cases {
		resp := good()
		tc.mutate(resp)
		err := checkPrepareResponse(testDriver, claims, resp)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want error containing %q, got %v", name, tc.want, err)
		}
	}
}

func TestCheckPrepareResponseDeviceForTwoRequests(t *testing.T) {
	// One device allocated by two requests (admin access or shared): both names are expected.
	claim := mkClaim("u1", result{"a", testDriver, "p", "pf-0"}, result{"b", testDriver, "p", "pf-0"})
	ok := map[string]prepareResult{"u1": {Devices: []preparedDevice{dev("p", "pf-0", "a", "b")}}}
	if err := checkPrepareResponse(testDriver, []*resourcev1.ResourceClaim{claim}, ok); err != nil {
		t.Errorf("both requests named: %v", err)
	}
	partial := map[string]prepareResult{"u1": {Devices: []preparedDevice{dev("p", "pf-0", "a")}}}
	if err := checkPrepareResponse(testDriver, []*resourcev1.ResourceClaim{claim}, partial); err == nil || !strings.Contains(err.Error(), `miss request "b"`) {
		t.Errorf("one request missing: got %v", err)
	}
}

func TestContainerCDIIDs(t *testing.T) {
	prepared := map[string][]preparedDevice{
		"gpu": {dev("p", "pf-0", "pf"), dev("p", "vf-1", "vf"), {CDIDeviceIDs: []string{"k/c=common"}}},
		"net": {dev("p", "vf-2", "x")},
	}
	ctr := func(claims ...corev1.ResourceClaim) *corev1.Container {
		return &corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Claims: claims}}
	}
	cases := []struct {
		name string
		c    *corev1.Container
		want []string
	}{
		{"no claims", ctr(), []string{}},
		{"whole claim", ctr(corev1.ResourceClaim{Name: "gpu"}), []string{"mock-accel.example.com/accel=pf-0", "mock-accel.example.com/accel=vf-1", "k/c=common"}},
		{"one request", ctr(corev1.ResourceClaim{Name: "gpu", Request: "vf"}), []string{"mock-accel.example.com/accel=vf-1", "k/c=common"}},
		{"two claims, no duplicates", ctr(corev1.ResourceClaim{Name: "net"}, corev1.ResourceClaim{Name: "gpu", Request: "pf"}, corev1.ResourceClaim{Name: "gpu", Request: "vf"}),
			[]string{"mock-accel.example.com/accel=vf-2", "mock-accel.example.com/accel=pf-0", "k/c=common", "mock-accel.example.com/accel=vf-1"}},
		{"unknown pod claim", ctr(corev1.ResourceClaim{Name: "nope"}), []string{}},
	}
	for _, tc := range cases {
		if got := containerCDIIDs(tc.c, prepared); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCheckUnprepareResponse(t *testing.T) {
	claims := []claimRef{{"ns", "a", "u1"}, {"ns", "b", "u2"}}
	if err := checkUnprepareResponse(claims, map[string]unprepareResult{"u1": {}, "u2": {}}); err != nil {
		t.Errorf("all entries, no errors: %v", err)
	}
	err := checkUnprepareResponse(claims, map[string]unprepareResult{"u1": {Error: "busy"}})
	if err == nil || !strings.Contains(err.Error(), "plugin error: busy") || !strings.Contains(err.Error(), "uid u2): no entry") {
		t.Errorf("want both the error and the missing entry, got %v", err)
	}
}

func TestClaimsOnlyUsedBy(t *testing.T) {
	st := &fakeletState{Pods: map[string]*podRecord{}}
	shared, own := claimRef{"ns", "shared", "u1"}, claimRef{"ns", "own", "u2"}
	st.addClaims("pod-a", "ns", "a", []claimRef{shared, own})
	st.addClaims("pod-b", "ns", "b", []claimRef{shared})
	st.addClaims("pod-b", "ns", "b", []claimRef{shared}) // a retried prepare records once
	if got := st.claimsOnlyUsedBy("pod-a"); !slices.Equal(got, []claimRef{own}) {
		t.Errorf("pod-a: got %v, want only its own claim", got)
	}
	if got := st.Pods["pod-b"].Claims; len(got) != 1 {
		t.Errorf("pod-b recorded %v", got)
	}
	delete(st.Pods, "pod-a")
	if got := st.claimsOnlyUsedBy("pod-b"); !slices.Equal(got, []claimRef{shared}) {
		t.Errorf("pod-b after pod-a left: got %v", got)
	}
}
