// pods.go owns the pod lifecycle the kubelet would drive for pods bound to this node: prepare
// the pod's claims through the plugin, check the answer, resolve CDI as the runtime would,
// record each container's edits, and report the pod Running; on deletion, unprepare the claims
// no other pod uses and finish the deletion. Failures become Events and an annotation, and
// the pod is retried.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

const (
	annotationEdits        = "mock-accel.example.com/container-edits"
	annotationPrepareError = "mock-accel.example.com/prepare-error"
	reasonPrepareFailed    = "FailedPrepareDynamicResources"
	reasonUnprepareFailed  = "FailedUnprepareDynamicResources"

	// notYetRetry: how soon a pod waiting for a controller (claim status, reservation) is
	// looked at again; after notYetGrace the wait is reported like any failure.
	notYetRetry = 500 * time.Millisecond
	notYetGrace = 30 * time.Second
	// Failures are retried after retryStep × attempt, at most retryMax; the kubelet never gives
	// up on a pod, nor does the fakelet while the pod exists.
	retryStep = 2 * time.Second
	retryMax  = 10 * time.Second
	// sameEventInterval: an identical failure is recorded as an Event at most this often.
	sameEventInterval = 30 * time.Second
	podWorkers        = 2
	uidIndex          = "uid"
)

// retryInfo is the per-pod failure history used for backoff and Event de-duplication.
type retryInfo struct {
	attempts    int
	notYetSince time.Time
	lastEvent   string
	lastEventAt time.Time
}

type podController struct {
	cs            kubernetes.Interface
	node          string
	driver        string
	cdiDir        string
	containersDir string
	registry      *pluginRegistry
	logf          func(format string, args ...any)

	informer cache.SharedIndexInformer
	queue    workqueue.TypedDelayingInterface[string]

	// mu serializes prepare/unprepare calls together with the checkpoint that decides which
	// claims a departing pod may unprepare.
	mu    sync.Mutex
	state *fakeletState

	// rmu guards running and retries.
	rmu     sync.Mutex
	running map[string]bool // pods this process has reported Running
	retries map[string]*retryInfo
}

func newPodController(cs kubernetes.Interface, node, driver, cdiDir, containersDir string,
	registry *pluginRegistry, state *fakeletState, logf func(string, ...any)) (*podController, error) {
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
		cs: cs, node: node, driver: driver, cdiDir: cdiDir, containersDir: containersDir,
		registry: registry, logf: logf, informer: inf,
		queue:   workqueue.NewTypedDelayingQueue[string](),
		state:   state,
		running: map[string]bool{}, retries: map[string]*retryInfo{},
	}
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			c.queue.Add(string(p.UID))
		}
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	if err != nil {
		return nil, fmt.Errorf("pod informer handler: %w", err)
	}
	return c, nil
}

// enqueueAll queues every known pod and every checkpointed pod (e.g. after the driver
// registered, or at start-up to re-prepare and to finish pods deleted while we were away).
func (c *podController) enqueueAll() {
	for _, obj := range c.informer.GetStore().List() {
		if p, ok := obj.(*corev1.Pod); ok {
			c.queue.Add(string(p.UID))
		}
	}
	c.mu.Lock()
	for uid := range c.state.Pods {
		c.queue.Add(uid)
	}
	c.mu.Unlock()
}

// run starts the informer and the workers and blocks until ctx ends.
func (c *podController) run(ctx context.Context) {
	go c.informer.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return
	}
	c.logf("pods: informer synced (%d pods on this node, %d in the checkpoint)", len(c.informer.GetStore().List()), len(c.state.Pods))
	c.enqueueAll()
	var wg sync.WaitGroup
	for range podWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
}

func (c *podController) processNext(ctx context.Context) bool {
	uid, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(uid)
	err := c.sync(ctx, uid)
	if ctx.Err() != nil {
		return true
	}
	delay, report := c.afterSync(uid, err)
	if report != nil {
		// Synchronous: the workqueue never hands out the same pod twice at once, so a later
		// success cannot be overtaken by this failure's annotation.
		c.reportFailure(ctx, report)
	}
	if delay > 0 {
		c.queue.AddAfter(uid, delay)
	}
	return true
}

// afterSync updates the pod's failure history and decides when to retry and whether to
// record the failure.
func (c *podController) afterSync(uid string, err error) (time.Duration, *podFailure) {
	if err == nil {
		c.rmu.Lock()
		delete(c.retries, uid)
		c.rmu.Unlock()
		return 0, nil
	}
	name := c.podName(uid) // takes c.mu, which a prepare call may hold: not under rmu
	c.rmu.Lock()
	defer c.rmu.Unlock()
	ri := c.retries[uid]
	if ri == nil {
		ri = &retryInfo{}
		c.retries[uid] = ri
	}
	if errors.Is(err, errNotYet) {
		if ri.notYetSince.IsZero() {
			ri.notYetSince = time.Now()
			c.logf("pods: %s: waiting: %v", name, err)
		}
		if time.Since(ri.notYetSince) < notYetGrace {
			return notYetRetry, nil
		}
	} else {
		ri.notYetSince = time.Time{}
	}
	ri.attempts++
	delay := min(retryStep*time.Duration(ri.attempts), retryMax)
	c.logf("pods: %s: attempt %d failed, retrying in %s: %v", name, ri.attempts, delay, err)
	var fe *podFailure
	if errors.As(err, &fe) && (fe.Error() != ri.lastEvent || time.Since(ri.lastEventAt) >= sameEventInterval) {
		ri.lastEvent, ri.lastEventAt = fe.Error(), time.Now()
		return delay, fe
	}
	return delay, nil
}

// podFailure is a failed prepare or unprepare of one pod, reported as an Event.
type podFailure struct {
	pod    corev1.ObjectReference
	reason string
	// annotate: also set the prepare-error annotation (not on a pod that is going away).
	annotate bool
	err      error
}

func (f *podFailure) Error() string { return f.err.Error() }
func (f *podFailure) Unwrap() error { return f.err }

func (c *podController) podName(uid string) string {
	if objs, _ := c.informer.GetIndexer().ByIndex(uidIndex, uid); len(objs) > 0 {
		p := objs[0].(*corev1.Pod)
		return p.Namespace + "/" + p.Name
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if rec := c.state.Pods[uid]; rec != nil {
		return rec.Namespace + "/" + rec.Name
	}
	return "pod uid " + uid
}

// sync brings one pod (by UID) to where the kubelet would take it.
func (c *podController) sync(ctx context.Context, uid string) error {
	objs, err := c.informer.GetIndexer().ByIndex(uidIndex, uid)
	if err != nil {
		return err
	}
	if len(objs) == 0 {
		return c.finish(ctx, uid, nil)
	}
	pod := objs[0].(*corev1.Pod)
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return c.finish(ctx, uid, pod)
	}
	c.rmu.Lock()
	done := c.running[uid]
	c.rmu.Unlock()
	if done {
		return nil
	}
	return c.start(ctx, pod)
}

func podRef(pod *corev1.Pod) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
}

// resolvedClaim is one pod claim with its ResourceClaim.
type resolvedClaim struct {
	podClaimName string
	claim        *resourcev1.ResourceClaim
}

// start prepares the pod's claims and reports the pod Running.
func (c *podController) start(ctx context.Context, pod *corev1.Pod) error {
	id := pod.Namespace + "/" + pod.Name
	fail := func(err error) error {
		return &podFailure{pod: podRef(pod), reason: reasonPrepareFailed, annotate: true, err: err}
	}

	claims, err := c.resolveClaims(ctx, pod)
	if err != nil {
		return fail(err)
	}
	var ours []*resourcev1.ResourceClaim
	for _, rc := range claims {
		for _, d := range claimDrivers(rc.claim) {
			if d != c.driver {
				return fail(fmt.Errorf("claim %s/%s is allocated devices of DRA driver %s, which is not registered on this node", rc.claim.Namespace, rc.claim.Name, d))
			}
		}
		ours = append(ours, rc.claim)
	}

	prepared := map[string][]preparedDevice{} // pod claim name -> devices
	var cdiCache *cdi.Cache                   // loaded only when there are CDI ids to inject
	if len(ours) > 0 {
		client, err := c.registry.client()
		if err != nil {
			return fail(err)
		}
		refs := make([]claimRef, 0, len(ours))
		for _, cl := range ours {
			refs = append(refs, claimRef{Namespace: cl.Namespace, Name: cl.Name, UID: string(cl.UID)})
		}
		c.mu.Lock()
		c.state.addClaims(string(pod.UID), pod.Namespace, pod.Name, refs)
		err = c.state.save()
		if err != nil {
			c.mu.Unlock()
			return fail(err)
		}
		c.logf("pods: %s: NodePrepareResources(%s) via %s for claims %v", id, client.service, client.endpoint, refs)
		began := time.Now()
		resp, err := client.Prepare(ctx, refs)
		c.mu.Unlock()
		if err != nil {
			return fail(err)
		}
		c.logf("pods: %s: NodePrepareResources answered in %s: %s", id, time.Since(began).Round(time.Millisecond), mustJSON(resp))
		if err := checkPrepareResponse(c.driver, ours, resp); err != nil {
			return fail(fmt.Errorf("NodePrepareResources answer rejected: %w", err))
		}
		if cdiCache, err = loadCDICache(c.cdiDir); err != nil {
			return fail(err)
		}
		ids := allCDIIDs(resp)
		if _, err := injectCDI(cdiCache, ids); err != nil {
			return fail(err)
		}
		c.logf("pods: %s: CDI ids %q resolve in %s", id, ids, c.cdiDir)
		for _, rc := range claims {
			prepared[rc.podClaimName] = resp[string(rc.claim.UID)].Devices
		}
	}

	// What each container receives, as a runtime would inject it.
	edits := map[string]containerEdits{}
	var files []string
	for _, ctr := range allContainers(pod) {
		e, err := injectCDI(cdiCache, containerCDIIDs(ctr, prepared))
		if err != nil {
			return fail(fmt.Errorf("container %s: %w", ctr.Name, err))
		}
		edits[ctr.Name] = e
		path := c.containerFile(pod.Namespace, pod.Name, ctr.Name)
		if err := writeFileAtomic(path, append(mustJSONIndent(e), '\n')); err != nil {
			return fail(err)
		}
		files = append(files, path)
		c.logf("pods: %s: container %s: %d env, %d mounts, %d device nodes from CDI %q -> %s", id, ctr.Name, len(e.Env), len(e.Mounts), len(e.DeviceNodes), e.CDIDevices, path)
	}
	c.mu.Lock()
	if rec := c.state.Pods[string(pod.UID)]; rec != nil {
		rec.Files = files
		err = c.state.save()
	}
	c.mu.Unlock()
	if err != nil {
		return fail(err)
	}

	if err := c.patchAnnotations(ctx, pod, map[string]any{annotationEdits: editsAnnotation(pod, edits), annotationPrepareError: nil}); err != nil {
		return fail(err)
	}
	if pod.Status.Phase != corev1.PodRunning {
		if err := c.patchRunning(ctx, pod); err != nil {
			return fail(err)
		}
	}
	c.rmu.Lock()
	c.running[string(pod.UID)] = true
	c.rmu.Unlock()
	c.logf("pods: %s: Running (%d claim(s) prepared)", id, len(ours))
	return nil
}

// resolveClaims fetches the pod's claims and applies the kubelet's checks to each.
func (c *podController) resolveClaims(ctx context.Context, pod *corev1.Pod) ([]resolvedClaim, error) {
	var out []resolvedClaim
	for i := range pod.Spec.ResourceClaims {
		pc := &pod.Spec.ResourceClaims[i]
		name, needed, fromTemplate, err := podClaimName(pod, pc)
		if err != nil {
			return nil, err
		}
		if !needed {
			continue
		}
		claim, err := c.cs.ResourceV1().ResourceClaims(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get ResourceClaim %s/%s: %w", pod.Namespace, name, err)
		}
		if err := checkClaimForPod(claim, pod, fromTemplate); err != nil {
			return nil, err
		}
		out = append(out, resolvedClaim{podClaimName: pc.Name, claim: claim})
	}
	return out, nil
}

// finish unprepares what a departing pod held, removes its container files, and completes a
// deletion. pod is nil when the pod is already gone from the API.
func (c *podController) finish(ctx context.Context, uid string, pod *corev1.Pod) error {
	c.mu.Lock()
	rec := c.state.Pods[uid]
	var files []string
	if rec != nil {
		files = rec.Files
	}
	name := c.podNameLocked(uid, pod, rec)
	ref := corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", UID: types.UID(uid)}
	if pod != nil {
		ref = podRef(pod)
	} else if rec != nil {
		ref.Namespace, ref.Name = rec.Namespace, rec.Name
	}
	fail := func(err error) error {
		return &podFailure{pod: ref, reason: reasonUnprepareFailed, err: err}
	}
	if rec != nil {
		toUnprepare := c.state.claimsOnlyUsedBy(uid)
		if kept := len(rec.Claims) - len(toUnprepare); kept > 0 {
			c.logf("pods: %s: %d claim(s) stay prepared for other pods", name, kept)
		}
		if len(toUnprepare) > 0 {
			client, err := c.registry.client()
			if err != nil {
				c.mu.Unlock()
				return fail(err)
			}
			c.logf("pods: %s: NodeUnprepareResources(%s) via %s for claims %v", name, client.service, client.endpoint, toUnprepare)
			resp, err := client.Unprepare(ctx, toUnprepare)
			if err == nil {
				err = checkUnprepareResponse(toUnprepare, resp)
			}
			if err != nil {
				c.mu.Unlock()
				return fail(err)
			}
			c.logf("pods: %s: NodeUnprepareResources answered: %s", name, mustJSON(resp))
		}
		delete(c.state.Pods, uid)
		if err := c.state.save(); err != nil {
			c.mu.Unlock()
			return fail(err)
		}
	}
	c.mu.Unlock()

	if pod != nil {
		for _, ctr := range allContainers(pod) {
			files = append(files, c.containerFile(pod.Namespace, pod.Name, ctr.Name))
		}
	}
	for _, f := range files {
		if err := os.Remove(f); err == nil {
			c.logf("pods: %s: removed %s", name, f)
		} else if !os.IsNotExist(err) {
			return fail(err)
		}
	}
	c.rmu.Lock()
	delete(c.running, uid)
	c.rmu.Unlock()

	if pod == nil || pod.DeletionTimestamp == nil {
		// Gone already, or terminal but not deleted: the kubelet leaves such pods alone.
		return nil
	}
	err := c.cs.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	switch {
	case err == nil:
		c.logf("pods: %s: deleted (grace period 0)", name)
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		c.logf("pods: %s: already deleted", name)
	default:
		return fail(fmt.Errorf("delete pod %s: %w", name, err))
	}
	return nil
}

func (c *podController) podNameLocked(uid string, pod *corev1.Pod, rec *podRecord) string {
	switch {
	case pod != nil:
		return pod.Namespace + "/" + pod.Name
	case rec != nil:
		return rec.Namespace + "/" + rec.Name
	}
	return "pod uid " + uid
}

// checkUnprepareResponse: every claim needs an entry, without error.
func checkUnprepareResponse(claims []claimRef, resp map[string]unprepareResult) error {
	var errs []error
	for _, cl := range claims {
		r, ok := resp[cl.UID]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("claim %s/%s (uid %s): no entry in the unprepare response", cl.Namespace, cl.Name, cl.UID))
		case r.Error != "":
			errs = append(errs, fmt.Errorf("claim %s/%s: plugin error: %s", cl.Namespace, cl.Name, r.Error))
		}
	}
	return errors.Join(errs...)
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
func editsAnnotation(pod *corev1.Pod, edits map[string]containerEdits) string {
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

// patchRunning reports the pod as a kubelet would once all its containers run.
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
	patch := mustJSON(map[string]any{"status": st})
	_, err := c.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("set status of pod %s/%s to Running: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// reportFailure records a Warning Event on the pod and, for prepare failures, the
// prepare-error annotation. Errors here are only logged: the pod is retried anyway.
func (c *podController) reportFailure(ctx context.Context, f *podFailure) {
	msg := f.Error()
	if len(msg) > 1000 {
		msg = msg[:997] + "..."
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: f.pod.Name + ".", Namespace: f.pod.Namespace},
		InvolvedObject:      f.pod,
		Reason:              f.reason,
		Message:             msg,
		Type:                corev1.EventTypeWarning,
		Source:              corev1.EventSource{Component: "fakelet", Host: c.node},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		ReportingController: "fakelet",
		ReportingInstance:   c.node,
	}
	if f.pod.Namespace == "" || f.pod.Name == "" {
		return
	}
	if _, err := c.cs.CoreV1().Events(f.pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.logf("pods: recording Event %s on %s/%s: %v", f.reason, f.pod.Namespace, f.pod.Name, err)
	} else {
		c.logf("pods: Event %s recorded on %s/%s", f.reason, f.pod.Namespace, f.pod.Name)
	}
	if f.annotate {
		patch := mustJSON(map[string]any{"metadata": map[string]any{"annotations": map[string]any{annotationPrepareError: f.Error()}}})
		_, err := c.cs.CoreV1().Pods(f.pod.Namespace).Patch(ctx, f.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			c.logf("pods: annotating %s/%s with %s: %v", f.pod.Namespace, f.pod.Name, annotationPrepareError, err)
		}
	}
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
