// pods.go is the fakelet's pod worker: it moves the pods bound to this node through their
// lifecycle and hands every DRA step to the kubelet's DRA manager (kubelet.go), as the
// kubelet's pod workers and runtime manager do:
//
//   - start: PrepareResources(pod); then, per container, GetResources(pod, container) for its
//     CDI devices, which the fakelet resolves with the CDI library as a container runtime
//     would and records (file and pod annotation); then the pod status Running, with the
//     allocated devices' health from UpdateAllocatedResourcesStatus;
//   - a health change the manager reports (Updates) or the periodic resync: the status again;
//   - termination (deletion, terminal phase, or the pod gone from the API):
//     UnprepareResources(pod), the records removed, and a deleted pod finished with grace
//     period 0.
//
// A failed start is retried after the kubelet's pod-worker backoff; prepare failures become a
// FailedPrepareDynamicResources Event with the kubelet's wording.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/cm/dra"
	"k8s.io/kubernetes/pkg/kubelet/config"
	"k8s.io/utils/ptr"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

const (
	annotationEdits        = "mock-accel.example.com/container-edits"
	annotationPrepareError = "mock-accel.example.com/prepare-error"
	// The kubelet's event reasons (pkg/kubelet/events).
	reasonPrepareFailed = "FailedPrepareDynamicResources"
	reasonFailed        = "Failed"

	// The kubelet's pod workers retry a failed sync after backOffPeriod with 50% jitter
	// (pkg/kubelet/kubelet.go, pod_workers.go) and resync every pod about once a minute.
	backOffPeriod  = 10 * time.Second
	backOffJitter  = 0.5
	resyncInterval = time.Minute
	podWorkers     = 4
	uidIndex       = "uid"
)

type podController struct {
	cs            kubernetes.Interface
	node          string
	cdiDir        string
	containersDir string
	recorder      record.EventRecorder
	logger        klog.Logger
	logf          func(format string, args ...any)
	// dra is the kubelet's DRA manager; set before run.
	dra *dra.Manager

	informer cache.SharedIndexInformer
	queue    workqueue.TypedDelayingInterface[types.UID]

	mu sync.Mutex
	// known is the last object seen of each pod, kept after its deletion from the API until
	// it is terminated (the kubelet's pod workers keep it the same way).
	known    map[types.UID]*corev1.Pod
	running  map[types.UID]bool
	finished map[types.UID]bool
	// retryAt: a failed start is not retried before this time, whatever events arrive.
	retryAt map[types.UID]time.Time
}

func newPodController(cs kubernetes.Interface, node, cdiDir, containersDir string, recorder record.EventRecorder,
	logger klog.Logger, logf func(string, ...any)) (*podController, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + node }))
	inf := factory.Core().V1().Pods().Informer()
	err := inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}})
	if err != nil {
		return nil, fmt.Errorf("pod informer index: %w", err)
	}
	c := &podController{
		cs: cs, node: node, cdiDir: cdiDir, containersDir: containersDir,
		recorder: recorder, logger: logger, logf: logf, informer: inf,
		queue: workqueue.NewTypedDelayingQueue[types.UID](),
		known: map[types.UID]*corev1.Pod{}, running: map[types.UID]bool{},
		finished: map[types.UID]bool{}, retryAt: map[types.UID]time.Time{},
	}
	observe := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			c.mu.Lock()
			c.known[p.UID] = p
			c.mu.Unlock()
			c.queue.Add(p.UID)
		}
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    observe,
		UpdateFunc: func(_, obj any) { observe(obj) },
		DeleteFunc: observe,
	})
	if err != nil {
		return nil, fmt.Errorf("pod informer handler: %w", err)
	}
	return c, nil
}

// startInformer starts the pod informer and waits for its first list.
func (c *podController) startInformer(ctx context.Context) error {
	go c.informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return fmt.Errorf("pod informer for node %s did not sync", c.node)
	}
	c.logf("pods: informer synced (%d pods on this node)", len(c.informer.GetStore().List()))
	c.removeOrphanRecords()
	return nil
}

// sourcesReady is the kubelet's "all pod sources seen" for the DRA manager.
func (c *podController) sourcesReady() config.SourcesReady {
	return sourcesReadyFunc(c.informer.HasSynced)
}

// activePods is the kubelet's GetActivePods: the pods that may still run containers. Claims
// checkpointed for any other pod are unprepared by the manager's reconcile loop.
func (c *podController) activePods() []*corev1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*corev1.Pod
	for _, obj := range c.informer.GetStore().List() {
		p := obj.(*corev1.Pod)
		if !isTerminal(p) && !c.finished[p.UID] {
			out = append(out, p)
		}
	}
	return out
}

// run processes pods until ctx ends.
func (c *podController) run(ctx context.Context) {
	for _, obj := range c.informer.GetStore().List() {
		c.queue.Add(obj.(*corev1.Pod).UID)
	}
	var wg sync.WaitGroup
	for range podWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); c.watchHealth(ctx) }()
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
}

// watchHealth queues the pods the DRA manager reports a device-health change for, and every
// running pod once per resync interval, so that their status shows the current health.
func (c *podController) watchHealth(ctx context.Context) {
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-c.dra.Updates():
			c.logf("pods: device health changed for pods %v", u.PodUIDs)
			for _, uid := range u.PodUIDs {
				c.queue.Add(types.UID(uid))
			}
		case <-t.C:
			c.mu.Lock()
			for uid := range c.running {
				c.queue.Add(uid)
			}
			c.mu.Unlock()
		}
	}
}

func (c *podController) processNext(ctx context.Context) bool {
	uid, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(uid)
	err := c.sync(ctx, uid)
	if err == nil || ctx.Err() != nil {
		return true
	}
	delay := wait.Jitter(backOffPeriod, backOffJitter)
	c.mu.Lock()
	c.retryAt[uid] = time.Now().Add(delay)
	c.mu.Unlock()
	c.logf("pods: %s: %v (retrying in %s)", c.podName(uid), err, delay.Round(time.Millisecond))
	c.queue.AddAfter(uid, delay)
	return true
}

func (c *podController) podName(uid types.UID) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.known[uid]; p != nil {
		return p.Namespace + "/" + p.Name
	}
	return "pod uid " + string(uid)
}

func isTerminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// sync brings one pod to where the kubelet would take it.
func (c *podController) sync(ctx context.Context, uid types.UID) error {
	objs, err := c.informer.GetIndexer().ByIndex(uidIndex, string(uid))
	if err != nil {
		return err
	}
	c.mu.Lock()
	last := c.known[uid]
	c.mu.Unlock()
	if len(objs) == 0 {
		if last == nil {
			return nil
		}
		// Gone from the API (deleted by us after termination, or force-deleted): terminate
		// it like the kubelet's pod worker does with the last object it saw.
		if err := c.terminate(ctx, last); err != nil {
			return err
		}
		c.mu.Lock()
		delete(c.known, uid)
		delete(c.finished, uid)
		delete(c.retryAt, uid)
		c.mu.Unlock()
		return nil
	}
	pod := objs[0].(*corev1.Pod)
	if pod.DeletionTimestamp != nil || isTerminal(pod) {
		return c.finish(ctx, pod)
	}

	c.mu.Lock()
	running, retryAt := c.running[uid], c.retryAt[uid]
	c.mu.Unlock()
	switch {
	case running:
		return c.updateHealth(ctx, pod)
	case time.Now().Before(retryAt):
		return nil // backing off; the delayed retry is queued
	case c.containersRunning(pod):
		// The containers outlived a fakelet restart, as they outlive a kubelet restart. The
		// kubelet prepares resources only before it creates a pod sandbox, so it does not
		// prepare again: the manager knows the claims from its checkpoint.
		c.setRunning(uid)
		c.logf("pods: %s: containers still run from before the restart; not preparing again", pod.Namespace+"/"+pod.Name)
		return c.updateHealth(ctx, pod)
	}
	return c.start(ctx, pod)
}

func (c *podController) setRunning(uid types.UID) {
	c.mu.Lock()
	c.running[uid] = true
	delete(c.retryAt, uid)
	c.mu.Unlock()
}

// start prepares the pod's claims, records what each container receives and reports the pod
// Running.
func (c *podController) start(ctx context.Context, pod *corev1.Pod) error {
	id := pod.Namespace + "/" + pod.Name
	began := time.Now()
	if err := c.dra.PrepareResources(ctx, pod); err != nil {
		// The kubelet's runtime manager records exactly this Event before giving up the sync.
		c.recorder.Eventf(pod, corev1.EventTypeWarning, reasonPrepareFailed, "Failed to prepare dynamic resources: %v", err)
		c.annotatePrepareError(ctx, pod, err)
		return err
	}
	c.logf("pods: %s: PrepareResources done in %s", id, time.Since(began).Round(time.Millisecond))

	edits, err := c.recordContainers(pod)
	if err != nil {
		// What a runtime reports when CDI injection fails: the container is not created.
		c.recorder.Eventf(pod, corev1.EventTypeWarning, reasonFailed, "Error: %v", err)
		c.annotatePrepareError(ctx, pod, err)
		return err
	}
	if err := c.patchAnnotations(ctx, pod, map[string]any{annotationEdits: editsAnnotation(edits), annotationPrepareError: nil}); err != nil {
		return err
	}
	if pod.Status.Phase != corev1.PodRunning {
		if err := c.patchRunning(ctx, pod); err != nil {
			return err
		}
	}
	c.setRunning(pod.UID)
	c.logf("pods: %s: Running", id)
	return nil
}

// recordContainers asks the DRA manager for each container's CDI devices, resolves them with
// the CDI library as the runtime would, and writes each container's record.
func (c *podController) recordContainers(pod *corev1.Pod) (map[string]containerEdits, error) {
	id := pod.Namespace + "/" + pod.Name
	edits := map[string]containerEdits{}
	var cdiCache *cdi.Cache // loaded once, and only when a container has CDI devices
	for _, ctr := range allContainers(pod) {
		info, err := c.dra.GetResources(pod, ctr)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
		}
		ids := make([]string, 0, len(info.CDIDevices))
		for _, d := range info.CDIDevices {
			if !slices.Contains(ids, d.Name) {
				ids = append(ids, d.Name)
			}
		}
		if len(ids) > 0 && cdiCache == nil {
			if cdiCache, err = loadCDICache(c.cdiDir); err != nil {
				return nil, err
			}
		}
		e, err := injectCDI(cdiCache, ids)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", ctr.Name, err)
		}
		edits[ctr.Name] = e
		path := c.containerFile(pod.Namespace, pod.Name, ctr.Name)
		if err := writeFileAtomic(path, append(mustJSONIndent(e), '\n')); err != nil {
			return nil, err
		}
		c.logf("pods: %s: container %s: CDI devices %q -> %d env, %d mounts, %d device nodes; %s",
			id, ctr.Name, ids, len(e.Env), len(e.Mounts), len(e.DeviceNodes), path)
	}
	return edits, nil
}

// finish terminates a pod that is being deleted or has reached a terminal phase, and
// completes a deletion with grace period 0, as the kubelet's status manager does.
func (c *podController) finish(ctx context.Context, pod *corev1.Pod) error {
	c.mu.Lock()
	done := c.finished[pod.UID]
	c.mu.Unlock()
	if !done {
		if err := c.terminate(ctx, pod); err != nil {
			return err
		}
		c.mu.Lock()
		c.finished[pod.UID] = true
		c.mu.Unlock()
	}
	if pod.DeletionTimestamp == nil {
		return nil // terminal but not deleted: the kubelet leaves the object alone
	}
	id := pod.Namespace + "/" + pod.Name
	err := c.cs.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	switch {
	case err == nil:
		c.logf("pods: %s: deleted (grace period 0)", id)
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		c.logf("pods: %s: already deleted", id)
	default:
		return fmt.Errorf("delete pod %s: %w", id, err)
	}
	return nil
}

// terminate unprepares through the DRA manager what the pod holds (the manager keeps claims
// other pods still use) and removes the pod's container records.
func (c *podController) terminate(ctx context.Context, pod *corev1.Pod) error {
	id := pod.Namespace + "/" + pod.Name
	mightNeed := c.dra.PodMightNeedToUnprepareResources(pod.UID)
	if err := c.dra.UnprepareResources(ctx, pod); err != nil {
		return err // the kubelet records no Event here; it logs and retries
	}
	if mightNeed {
		c.logf("pods: %s: UnprepareResources done", id)
	}
	for _, ctr := range allContainers(pod) {
		f := c.containerFile(pod.Namespace, pod.Name, ctr.Name)
		if err := os.Remove(f); err == nil {
			c.logf("pods: %s: removed %s", id, f)
		} else if !os.IsNotExist(err) {
			return err
		}
	}
	c.mu.Lock()
	delete(c.running, pod.UID)
	c.mu.Unlock()
	return nil
}

// containersRunning: the pod is Running and every container's record exists, i.e. its
// "containers" survived a fakelet restart.
func (c *podController) containersRunning(pod *corev1.Pod) bool {
	if pod.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, ctr := range allContainers(pod) {
		if _, err := os.Stat(c.containerFile(pod.Namespace, pod.Name, ctr.Name)); err != nil {
			return false
		}
	}
	return true
}

// removeOrphanRecords removes the records of pods that no longer exist (deleted while the
// fakelet was down); the DRA manager's reconcile loop unprepares their claims.
func (c *podController) removeOrphanRecords() {
	present := map[string]bool{}
	for _, obj := range c.informer.GetStore().List() {
		p := obj.(*corev1.Pod)
		present[p.Namespace+"_"+p.Name] = true
	}
	entries, _ := os.ReadDir(c.containersDir)
	for _, e := range entries {
		parts := strings.Split(strings.TrimSuffix(e.Name(), ".json"), "_")
		if len(parts) != 3 || present[parts[0]+"_"+parts[1]] {
			continue
		}
		f := filepath.Join(c.containersDir, e.Name())
		if err := os.Remove(f); err == nil {
			c.logf("pods: removed %s: pod %s/%s no longer exists", f, parts[0], parts[1])
		}
	}
}

// updateHealth writes the devices' health as the DRA manager knows it into the container
// statuses of a running pod, when it changed.
func (c *podController) updateHealth(ctx context.Context, pod *corev1.Pod) error {
	want := pod.Status.DeepCopy()
	c.dra.UpdateAllocatedResourcesStatus(c.logger, pod, want)
	normalizeResourceStatus(want.ContainerStatuses)
	have := slices.Clone(pod.Status.ContainerStatuses)
	for i := range have {
		have[i] = *have[i].DeepCopy()
	}
	normalizeResourceStatus(have)
	if apiequality.Semantic.DeepEqual(want.ContainerStatuses, have) {
		return nil
	}
	patch := mustJSON(map[string]any{"status": map[string]any{"containerStatuses": want.ContainerStatuses}})
	_, err := c.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("update allocatedResourcesStatus of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.logf("pods: %s/%s: device health in status: %s", pod.Namespace, pod.Name, healthSummary(want.ContainerStatuses))
	return nil
}

// normalizeResourceStatus sorts what UpdateAllocatedResourcesStatus builds from maps, so that
// an unchanged health compares equal.
func normalizeResourceStatus(statuses []corev1.ContainerStatus) {
	for i := range statuses {
		rs := statuses[i].AllocatedResourcesStatus
		slices.SortFunc(rs, func(a, b corev1.ResourceStatus) int { return strings.Compare(string(a.Name), string(b.Name)) })
		for j := range rs {
			slices.SortFunc(rs[j].Resources, func(a, b corev1.ResourceHealth) int {
				return strings.Compare(string(a.ResourceID), string(b.ResourceID))
			})
		}
		if len(rs) == 0 {
			statuses[i].AllocatedResourcesStatus = nil
		}
	}
}

func healthSummary(statuses []corev1.ContainerStatus) string {
	var parts []string
	for _, s := range statuses {
		for _, rs := range s.AllocatedResourcesStatus {
			for _, r := range rs.Resources {
				parts = append(parts, fmt.Sprintf("%s %s %s=%s", s.Name, rs.Name, r.ResourceID, r.Health))
			}
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func allContainers(pod *corev1.Pod) []*corev1.Container {
	var out []*corev1.Container
	for i := range pod.Spec.InitContainers {
		out = append(out, &pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		out = append(out, &pod.Spec.Containers[i])
	}
	return out
}

func (c *podController) containerFile(namespace, pod, container string) string {
	return filepath.Join(c.containersDir, namespace+"_"+pod+"_"+container+".json")
}

// editsAnnotation: one container -> its edits object; several -> an object keyed by container
// name (init containers included).
func editsAnnotation(edits map[string]containerEdits) string {
	if len(edits) == 1 {
		for _, e := range edits {
			return string(mustJSON(e))
		}
	}
	return string(mustJSON(edits))
}

func (c *podController) patchAnnotations(ctx context.Context, pod *corev1.Pod, ann map[string]any) error {
	patch := mustJSON(map[string]any{"metadata": map[string]any{"annotations": ann}})
	_, err := c.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// annotatePrepareError leaves the failure on the pod for test diagnostics; errors here are
// only logged, the pod is retried anyway.
func (c *podController) annotatePrepareError(ctx context.Context, pod *corev1.Pod, cause error) {
	msg := cause.Error()
	if len(msg) > 1000 {
		msg = msg[:997] + "..."
	}
	if err := c.patchAnnotations(ctx, pod, map[string]any{annotationPrepareError: msg}); err != nil && !apierrors.IsNotFound(err) {
		c.logf("pods: %v", err)
	}
}

// patchRunning reports the pod as a kubelet would once all its containers run, with the
// allocated devices' health filled in by the DRA manager.
func (c *podController) patchRunning(ctx context.Context, pod *corev1.Pod) error {
	now := metav1.Now()
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
	}
	st := corev1.PodStatus{
		Phase:   corev1.PodRunning,
		HostIP:  "127.0.0.1",
		HostIPs: []corev1.HostIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers), cond(corev1.PodInitialized),
			cond(corev1.ContainersReady), cond(corev1.PodReady), cond(corev1.PodScheduled),
		},
	}
	if pod.Status.StartTime == nil {
		st.StartTime = &now
	}
	for i := range pod.Spec.InitContainers {
		ctr := &pod.Spec.InitContainers[i]
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name: ctr.Name, Image: ctr.Image, ImageID: "fakelet://" + ctr.Image,
			ContainerID: "fakelet://" + string(pod.UID) + "/" + ctr.Name,
			Ready:       true, Started: ptr.To(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now,
			}},
		})
	}
	for i := range pod.Spec.Containers {
		ctr := &pod.Spec.Containers[i]
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: ctr.Name, Image: ctr.Image, ImageID: "fakelet://" + ctr.Image,
			ContainerID: "fakelet://" + string(pod.UID) + "/" + ctr.Name,
			Ready:       true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	c.dra.UpdateAllocatedResourcesStatus(c.logger, pod, &st)
	normalizeResourceStatus(st.ContainerStatuses)
	patch := mustJSON(map[string]any{"status": st})
	_, err := c.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("set status of pod %s/%s to Running: %w", pod.Namespace, pod.Name, err)
	}
	c.logf("pods: %s/%s: device health in status: %s", pod.Namespace, pod.Name, healthSummary(st.ContainerStatuses))
	return nil
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

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte(fmt.Sprintf("%q", err.Error()))
	}
	return b
}

func mustJSONIndent(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return []byte(fmt.Sprintf("%q", err.Error()))
	}
	return b
}
