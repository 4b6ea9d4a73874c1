// dra_client.go owns the gRPC side of the kubelet-to-plugin contract: dialling a plugin's
// Unix socket and calling the DRA and registration services with the kubelet's generated stubs.
// The v1 and v1beta1 DRA services differ only in field 5 (share_id), so both are wrapped behind
// one version-neutral client and one result shape.
package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
	drav1beta1 "k8s.io/kubelet/pkg/apis/dra/v1beta1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// pluginCallTimeout is the kubelet's per-call timeout for DRA and registration calls.
const pluginCallTimeout = 45 * time.Second

// The DRA service versions this fakelet speaks, in the kubelet's order of preference when a
// plugin lists several (the kubelet walks the plugin's list, not its own).
const (
	serviceV1      = drav1.DRAPluginService
	serviceV1beta1 = drav1beta1.DRAPluginService
)

// claimRef identifies a claim the way the DRA gRPC API does.
type claimRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
}

func (c claimRef) String() string { return c.Namespace + "/" + c.Name + "/" + c.UID }

// preparedDevice is one entry of NodePrepareResourceResponse.devices, version-neutral.
// ShareID is nil when the field is absent (always for v1beta1).
type preparedDevice struct {
	RequestNames []string `json:"request_names"`
	PoolName     string   `json:"pool_name"`
	DeviceName   string   `json:"device_name"`
	CDIDeviceIDs []string `json:"cdi_device_ids"`
	ShareID      *string  `json:"share_id,omitempty"`
}

// prepareResult is one claim's entry in NodePrepareResourcesResponse.claims.
type prepareResult struct {
	Devices []preparedDevice `json:"devices"`
	Error   string           `json:"error"`
}

// unprepareResult is one claim's entry in NodeUnprepareResourcesResponse.claims.
type unprepareResult struct {
	Error string `json:"error"`
}

// draClient calls one plugin endpoint through the service version chosen at registration.
type draClient struct {
	endpoint string
	service  string
	conn     *grpc.ClientConn
}

// dialUnix opens a lazy gRPC connection to a Unix socket, as the kubelet does: `unix:<path>`
// with insecure credentials.
func dialUnix(path string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix:"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial unix:%s: %w", path, err)
	}
	return conn, nil
}

func newDRAClient(endpoint, service string) (*draClient, error) {
	if service != serviceV1 && service != serviceV1beta1 {
		return nil, fmt.Errorf("unsupported DRA service %q (want %q or %q)", service, serviceV1, serviceV1beta1)
	}
	conn, err := dialUnix(endpoint)
	if err != nil {
		return nil, err
	}
	return &draClient{endpoint: endpoint, service: service, conn: conn}, nil
}

func (c *draClient) Close() error { return c.conn.Close() }

// Prepare calls NodePrepareResources. A non-nil error means the whole call failed (the kubelet
// then ignores the response); per-claim failures are in the map.
func (c *draClient) Prepare(ctx context.Context, claims []claimRef) (map[string]prepareResult, error) {
	ctx, cancel := context.WithTimeout(ctx, pluginCallTimeout)
	defer cancel()
	out := map[string]prepareResult{}
	switch c.service {
	case serviceV1:
		req := &drav1.NodePrepareResourcesRequest{}
		for _, cl := range claims {
			req.Claims = append(req.Claims, &drav1.Claim{Namespace: cl.Namespace, Name: cl.Name, Uid: cl.UID})
		}
		resp, err := drav1.NewDRAPluginClient(c.conn).NodePrepareResources(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s NodePrepareResources on %s: %w", c.service, c.endpoint, err)
		}
		for uid, r := range resp.GetClaims() {
			res := prepareResult{Error: r.GetError(), Devices: []preparedDevice{}}
			for _, d := range r.GetDevices() {
				res.Devices = append(res.Devices, preparedDevice{
					RequestNames: nonNil(d.GetRequestNames()),
					PoolName:     d.GetPoolName(),
					DeviceName:   d.GetDeviceName(),
					CDIDeviceIDs: nonNil(d.GetCdiDeviceIds()),
					ShareID:      d.ShareId,
				})
			}
			out[uid] = res
		}
	case serviceV1beta1:
		req := &drav1beta1.NodePrepareResourcesRequest{}
		for _, cl := range claims {
			req.Claims = append(req.Claims, &drav1beta1.Claim{Namespace: cl.Namespace, Name: cl.Name, Uid: cl.UID})
		}
		resp, err := drav1beta1.NewDRAPluginClient(c.conn).NodePrepareResources(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s NodePrepareResources on %s: %w", c.service, c.endpoint, err)
		}
		for uid, r := range resp.GetClaims() {
			res := prepareResult{Error: r.GetError(), Devices: []preparedDevice{}}
			for _, d := range r.GetDevices() {
				res.Devices = append(res.Devices, preparedDevice{
					RequestNames: nonNil(d.GetRequestNames()),
					PoolName:     d.GetPoolName(),
					DeviceName:   d.GetDeviceName(),
					CDIDeviceIDs: nonNil(d.GetCdiDeviceIds()),
				})
			}
			out[uid] = res
		}
	}
	return out, nil
}

// Unprepare calls NodeUnprepareResources; error semantics as for Prepare.
func (c *draClient) Unprepare(ctx context.Context, claims []claimRef) (map[string]unprepareResult, error) {
	ctx, cancel := context.WithTimeout(ctx, pluginCallTimeout)
	defer cancel()
	out := map[string]unprepareResult{}
	switch c.service {
	case serviceV1:
		req := &drav1.NodeUnprepareResourcesRequest{}
		for _, cl := range claims {
			req.Claims = append(req.Claims, &drav1.Claim{Namespace: cl.Namespace, Name: cl.Name, Uid: cl.UID})
		}
		resp, err := drav1.NewDRAPluginClient(c.conn).NodeUnprepareResources(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s NodeUnprepareResources on %s: %w", c.service, c.endpoint, err)
		}
		for uid, r := range resp.GetClaims() {
			out[uid] = unprepareResult{Error: r.GetError()}
		}
	case serviceV1beta1:
		req := &drav1beta1.NodeUnprepareResourcesRequest{}
		for _, cl := range claims {
			req.Claims = append(req.Claims, &drav1beta1.Claim{Namespace: cl.Namespace, Name: cl.Name, Uid: cl.UID})
		}
		resp, err := drav1beta1.NewDRAPluginClient(c.conn).NodeUnprepareResources(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s NodeUnprepareResources on %s: %w", c.service, c.endpoint, err)
		}
		for uid, r := range resp.GetClaims() {
			out[uid] = unprepareResult{Error: r.GetError()}
		}
	}
	return out, nil
}

// registrationClient talks to a plugin's registration socket.
type registrationClient struct {
	socket string
	conn   *grpc.ClientConn
}

// newRegistrationClient dials a registration socket as the kubelet's plugin manager does
// (operation_generator.go): the bare socket path as the target, so grpc-go derives the
// `:authority` from the path, and a Unix context dialer. Lazy: errors surface on the first call.
func newRegistrationClient(socket string) (*registrationClient, error) {
	//nolint:staticcheck // DialContext is what the kubelet calls; NewClient would change the target's meaning.
	conn, err := grpc.DialContext(context.Background(), socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return &registrationClient{socket: socket, conn: conn}, nil
}

func (c *registrationClient) Close() error { return c.conn.Close() }

// pluginInfo mirrors pluginregistration.PluginInfo with the proto's field names.
type pluginInfo struct {
	Type              string   `json:"type"`
	Name              string   `json:"name"`
	Endpoint          string   `json:"endpoint"`
	SupportedVersions []string `json:"supported_versions"`
}

func (c *registrationClient) GetInfo(ctx context.Context, timeout time.Duration) (pluginInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	info, err := registerapi.NewRegistrationClient(c.conn).GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		return pluginInfo{}, fmt.Errorf("GetInfo on %s: %w", c.socket, err)
	}
	return pluginInfo{
		Type:              info.GetType(),
		Name:              info.GetName(),
		Endpoint:          info.GetEndpoint(),
		SupportedVersions: nonNil(info.GetSupportedVersions()),
	}, nil
}

// NotifyRegistrationStatus reports the kubelet's verdict to the plugin.
func (c *registrationClient) NotifyRegistrationStatus(ctx context.Context, registered bool, errText string) error {
	ctx, cancel := context.WithTimeout(ctx, pluginCallTimeout)
	defer cancel()
	_, err := registerapi.NewRegistrationClient(c.conn).NotifyRegistrationStatus(ctx,
		&registerapi.RegistrationStatus{PluginRegistered: registered, Error: errText})
	if err != nil {
		return fmt.Errorf("NotifyRegistrationStatus(registered=%t) on %s: %w", registered, c.socket, err)
	}
	return nil
}

// nonNil turns a nil slice into an empty one so that JSON shows [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
