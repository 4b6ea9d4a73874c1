package main

// The ResourceClaims both plugins prepare: real objects in the API server, allocated one
// device each, as the scheduler would have allocated them.

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
)

// device is one allocation result: which driver, pool and device a claim gets.
type device struct {
	driver, pool, name string
}

// createClaims makes one claim per device in the namespace and writes its allocation into the
// claim's status (the scheduler's part: the bench drives the node side only). A claim is named
// <prefix>-<i>; a left-over claim of an earlier run is deleted first.
func createClaims(ctx context.Context, client kubernetes.Interface, namespace, node, prefix string,
	devices []device) ([]*drav1.Claim, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	claims := client.ResourceV1().ResourceClaims(namespace)
	var out []*drav1.Claim
	for i, d := range devices {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if err := claims.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete the left-over ResourceClaim %s/%s: %w", namespace, name, err)
		}
		claim := &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
				Requests: []resourceapi.DeviceRequest{{
					Name:    "r0",
					Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: "bench"},
				}},
			}},
		}
		created, err := claims.Create(ctx, claim, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create ResourceClaim %s/%s: %w", namespace, name, err)
		}
		created.Status.Allocation = &resourceapi.AllocationResult{
			Devices: resourceapi.DeviceAllocationResult{
				Results: []resourceapi.DeviceRequestAllocationResult{{
					Request: "r0", Driver: d.driver, Pool: d.pool, Device: d.name,
				}},
			},
			NodeSelector: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchFields: []corev1.NodeSelectorRequirement{{
					Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{node},
				}},
			}}},
		}
		allocated, err := claims.UpdateStatus(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return nil, fmt.Errorf("write the allocation of ResourceClaim %s/%s (device %s/%s): %w",
				namespace, name, d.pool, d.name, err)
		}
		out = append(out, &drav1.Claim{Namespace: namespace, Name: name, Uid: string(allocated.UID)})
	}
	return out, nil
}

// ensureNamespace creates the namespace unless it exists.
func ensureNamespace(ctx context.Context, client kubernetes.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil &&
		!apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}
