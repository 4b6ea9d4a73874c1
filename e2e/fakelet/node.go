// node.go owns the fake Node's presence in the API: the Node object the scheduler accepts
// (labels, capacity with pods, Ready, no not-ready taint) and its Lease heartbeat. The
// ResourceSlice wipes a kubelet performs are the kubelet's DRA code's (kubelet.go).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

const (
	notReadyTaint      = "node.kubernetes.io/not-ready"
	nodeLeaseNamespace = "kube-node-lease"
	leaseDuration      = 40 * time.Second
)

type nodeAgent struct {
	cs   kubernetes.Interface
	name string
	logf func(format string, args ...any)
}

func nodeLabels(name string) map[string]string {
	return map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
	}
}

// nodeStatus is the status the fake node reports: enough for NodeResourcesFit (pods!) and for
// anything that reads Ready.
func nodeStatus(kubeletVersion string, now metav1.Time) corev1.NodeStatus {
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res.DeepCopy(),
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "fakelet has sufficient memory"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "fakelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "fakelet has sufficient PID"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "fakelet is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:          kubeletVersion,
			OperatingSystem:         "linux",
			Architecture:            "amd64",
			ContainerRuntimeVersion: "fakelet://0",
		},
	}
}

// ensureNode creates or updates the Node and returns its UID.
func (n *nodeAgent) ensureNode(ctx context.Context) (types.UID, error) {
	kubeletVersion := "v0.0.0-fakelet"
	if v, err := n.cs.Discovery().ServerVersion(); err == nil {
		kubeletVersion = v.GitVersion
	}
	nodes := n.cs.CoreV1().Nodes()
	node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		node, err = nodes.Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: nodeLabels(n.name)},
			Status:     nodeStatus(kubeletVersion, metav1.Now()),
		}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("create Node %s: %w", n.name, err)
		}
		n.logf("node: created Node %s (uid %s)", n.name, node.UID)
	case err != nil:
		return "", fmt.Errorf("get Node %s: %w", n.name, err)
	default:
		n.logf("node: Node %s exists (uid %s); updating it", n.name, node.UID)
	}

	// Labels and taints: the TaintNodesByCondition admission plugin adds not-ready on create.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		changed := false
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		for k, v := range nodeLabels(n.name) {
			if cur.Labels[k] != v {
				cur.Labels[k] = v
				changed = true
			}
		}
		var taints []corev1.Taint
		for _, t := range cur.Spec.Taints {
			if t.Key == notReadyTaint {
				n.logf("node: removing taint %s:%s from Node %s", t.Key, t.Effect, n.name)
				changed = true
				continue
			}
			taints = append(taints, t)
		}
		cur.Spec.Taints = taints
		if !changed {
			return nil
		}
		_, err = nodes.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("update labels and taints of Node %s: %w", n.name, err)
	}

	// Status through the status subresource: whether create kept it depends on the server.
	patch, err := json.Marshal(map[string]any{"status": nodeStatus(kubeletVersion, metav1.Now())})
	if err != nil {
		return "", err
	}
	if _, err := nodes.Patch(ctx, n.name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return "", fmt.Errorf("patch status of Node %s: %w", n.name, err)
	}
	n.logf("node: Node %s status set: Ready=True, cpu=8, memory=16Gi, pods=110, kubeletVersion=%s", n.name, kubeletVersion)
	return node.UID, nil
}

// renewLease creates or renews kube-node-lease/<node>, owned by the Node like the kubelet's.
func (n *nodeAgent) renewLease(ctx context.Context, nodeUID types.UID) error {
	leases := n.cs.CoordinationV1().Leases(nodeLeaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, n.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: n.name, Namespace: nodeLeaseNamespace,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.name, UID: nodeUID}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(n.name),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Lease %s/%s: %w", nodeLeaseNamespace, n.name, err)
		}
		n.logf("node: created Lease %s/%s", nodeLeaseNamespace, n.name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get Lease %s/%s: %w", nodeLeaseNamespace, n.name, err)
	}
	lease.Spec.HolderIdentity = ptr.To(n.name)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration / time.Second))
	lease.Spec.RenewTime = &now
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew Lease %s/%s: %w", nodeLeaseNamespace, n.name, err)
	}
	return nil
}

// heartbeat renews the Lease every interval until ctx ends.
func (n *nodeAgent) heartbeat(ctx context.Context, nodeUID types.UID, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		err := n.renewLease(ctx, nodeUID)
		switch {
		case err != nil && ctx.Err() == nil:
			n.logf("node: %v", err)
			failing = true
		case err == nil && failing:
			n.logf("node: Lease renewal works again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
