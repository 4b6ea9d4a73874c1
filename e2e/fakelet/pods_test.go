package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
)

const testNode = "node1"

func mkClaim(name, uid string, reservedFor ...types.UID) *resourcev1.ResourceClaim {
	c := &resourcev1.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)},
		Status: resourcev1.ResourceClaimStatus{Allocation: &resourcev1.AllocationResult{
			Devices: resourcev1.DeviceAllocationResult{Results: []resourcev1.DeviceRequestAllocationResult{
				{Request: "r", Driver: testDriver, Pool: "pool", Device: "dev-" + name},
			}},
		}},
	}
	for _, p := range reservedFor {
		c.Status.ReservedFor = append(c.Status.ReservedFor, resourcev1.ResourceClaimConsumerReference{Resource: "pods", Name: "p", UID: p})
	}
	return c
}

func mkPod(name, uid, claimName string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{
			NodeName:       testNode,
			ResourceClaims: []corev1.PodResourceClaim{{Name: "accel", ResourceClaimName: &claimName}},
			Containers: []corev1.Container{
				{Name: "main", Image: "pause", Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "accel"}}}},
				{Name: "sidecar", Image: "pause"},
			},
		},
	}
}

// kubeletFixture is the fakelet's pod worker on the kubelet's DRA manager, with a fake API
// server and a fake plugin registered through the manager's own registration handler.
type kubeletFixture struct {
	plugin   *pluginFixture
	cs       *fake.Clientset
	manager  *dra.Manager
	pods     *podController
	recorder *record.FakeRecorder
	dir      string
}

func startKubelet(t *testing.T, objs ...any) *kubeletFixture {
	t.Helper()
	logger, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	f := &kubeletFixture{plugin: startPlugin(t, testDriver, "v1.DRAPlugin"), recorder: record.NewFakeRecorder(10), dir: t.TempDir()}
	var runtimeObjs []any
	runtimeObjs = append(runtimeObjs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	runtimeObjs = append(runtimeObjs, objs...)
	f.cs = fake.NewClientset()
	for _, o := range runtimeObjs {
		var err error
		switch o := o.(type) {
		case *corev1.Node:
			_, err = f.cs.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.Pod:
			_, err = f.cs.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *resourcev1.ResourceClaim:
			_, err = f.cs.ResourceV1().ResourceClaims(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var err error
	f.pods, err = newPodController(f.cs, testNode, f.plugin.cdiDir, filepath.Join(f.dir, "containers"), f.recorder, logger, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	f.manager, err = startKubeletDRA(ctx, kubeletDRAConfig{
		cs: f.cs, nodeName: testNode, kubeletDir: f.dir,
		activePods: func() []*corev1.Pod { return nil }, sourcesReady: sourcesReadyFunc(func() bool { return false }),
		recorder: f.recorder,
	}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.manager.Stop)
	f.pods.dra = f.manager
	// What the plugin manager's register operation does after GetInfo.
	h := f.manager.GetWatcherHandler()
	if err := h.ValidatePlugin(ctx, testDriver, f.plugin.endpoint, []string{"v1.DRAPlugin"}); err != nil {
		t.Fatal(err)
	}
	if err := h.RegisterPlugin(ctx, testDriver, f.plugin.endpoint, []string{"v1.DRAPlugin"}, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *kubeletFixture) pod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	p, err := f.cs.CoreV1().Pods("ns").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPodLifecycleThroughTheKubeletsDRAManager(t *testing.T) {
	pod := mkPod("p", "pod-1", "c")
	f := startKubelet(t, pod, mkClaim("c", "claim-1", pod.UID))
	ctx := context.Background()

	if err := f.pods.start(ctx, pod); err != nil {
		t.Fatalf("start: %v", err)
	}
	prepared, _ := f.plugin.dra.calls()
	if !slices.EqualFunc(prepared, [][]string{{"claim-1"}}, slices.Equal) {
		t.Errorf("NodePrepareResources calls %v, want one for claim-1", prepared)
	}
	// The container that lists the claim gets its CDI device, resolved; the other nothing.
	main := f.pods.containerFile("ns", "p", "main")
	var edits containerEdits
	data, err := os.ReadFile(main)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &edits); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(edits.CDIDevices, []string{cdiID("claim-1")}) || !slices.Contains(edits.Env, "MOCK_ACCEL_CLAIM=c") {
		t.Errorf("main container record: %+v", edits)
	}
	data, err = os.ReadFile(f.pods.containerFile("ns", "p", "sidecar"))
	if err != nil || !strings.Contains(string(data), `"cdiDevices": []`) {
		t.Errorf("sidecar record: %s, %v", data, err)
	}
	// Status Running, with the device's health as the kubelet computes it (no health stream:
	// Unknown), keyed by the pod claim and the CDI id.
	got := f.pod(t, "p")
	if got.Status.Phase != corev1.PodRunning || got.Annotations[annotationEdits] == "" {
		t.Fatalf("pod after start: phase %s, annotations %v", got.Status.Phase, got.Annotations)
	}
	var health []corev1.ResourceStatus
	for _, s := range got.Status.ContainerStatuses {
		if s.Name == "main" {
			health = s.AllocatedResourcesStatus
		} else if len(s.AllocatedResourcesStatus) > 0 {
			t.Errorf("container %s without claims has allocatedResourcesStatus %v", s.Name, s.AllocatedResourcesStatus)
		}
	}
	if len(health) != 1 || health[0].Name != "claim:accel" || len(health[0].Resources) != 1 ||
		health[0].Resources[0].ResourceID != corev1.ResourceID(cdiID("claim-1")) || health[0].Resources[0].Health != corev1.ResourceHealthStatusUnknown {
		t.Errorf("allocatedResourcesStatus of main: %+v", health)
	}
	cp, err := os.ReadFile(filepath.Join(f.dir, "dra_manager_state"))
	if err != nil || !strings.Contains(string(cp), "claim-1") {
		t.Errorf("the kubelet's checkpoint does not record claim-1: %s, %v", cp, err)
	}

	if err := f.pods.terminate(ctx, pod); err != nil {
		t.Fatalf("terminate: %v", err)
	}
	if _, unprepared := f.plugin.dra.calls(); !slices.EqualFunc(unprepared, [][]string{{"claim-1"}}, slices.Equal) {
		t.Errorf("NodeUnprepareResources calls %v, want one for claim-1", unprepared)
	}
	if _, err := os.Stat(main); !os.IsNotExist(err) {
		t.Errorf("container record %s not removed: %v", main, err)
	}
	if f.manager.PodMightNeedToUnprepareResources(pod.UID) {
		t.Error("the manager still holds claims for the terminated pod")
	}
}

func TestPrepareFailureIsAnEventWithTheKubeletsWording(t *testing.T) {
	pod := mkPod("p", "pod-1", "c")
	f := startKubelet(t, pod, mkClaim("c", "claim-1", "someone-else"))
	if err := f.pods.start(context.Background(), pod); err == nil {
		t.Fatal("start succeeded for a claim reserved for another pod")
	}
	if prepared, _ := f.plugin.dra.calls(); len(prepared) != 0 {
		t.Errorf("the plugin was called: %v", prepared)
	}
	select {
	case ev := <-f.recorder.Events:
		if !strings.HasPrefix(ev, "Warning FailedPrepareDynamicResources Failed to prepare dynamic resources: ") ||
			!strings.Contains(ev, "is not allowed to use ResourceClaim c") {
			t.Errorf("event %q", ev)
		}
	default:
		t.Error("no event recorded")
	}
	got := f.pod(t, "p")
	if got.Status.Phase == corev1.PodRunning || !strings.Contains(got.Annotations[annotationPrepareError], "not allowed") {
		t.Errorf("pod after a failed start: phase %s, annotations %v", got.Status.Phase, got.Annotations)
	}
}
