// oneshot.go holds the one-shot commands for targeted tests: each does one kubelet-side step
// against a plugin socket or a CDI directory, prints JSON on stdout and exits non-zero when
// the step failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/status"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// parseClaim parses "namespace/name/uid".
func parseClaim(s string) (claimRef, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return claimRef{}, fmt.Errorf("--claim %q: want namespace/name/uid", s)
	}
	return claimRef{Namespace: parts[0], Name: parts[1], UID: parts[2]}, nil
}

func apiService(api string) (string, error) {
	switch api {
	case "v1":
		return serviceV1, nil
	case "v1beta1":
		return serviceV1beta1, nil
	}
	return "", fmt.Errorf("--api %q: want v1 or v1beta1", api)
}

// rpcFailure is the JSON printed when a call failed as a whole.
type rpcFailure struct {
	API      string `json:"api,omitempty"`
	Endpoint string `json:"endpoint"`
	Code     string `json:"code,omitempty"` // gRPC status code, e.g. Unavailable
	Error    string `json:"error"`
}

func failure(api, endpoint string, err error) rpcFailure {
	f := rpcFailure{API: api, Endpoint: endpoint, Error: err.Error()}
	// FromError also finds a status wrapped by fmt.Errorf("%w").
	if s, ok := status.FromError(err); ok {
		f.Code = s.Code().String()
	}
	return f
}

// cmdRegister registers the plugin at --socket through the kubelet's own register operation
// (dial with the bare socket path, GetInfo, validate, NotifyRegistrationStatus) and prints what
// happened. It is the regression check for plugins that refuse the kubelet's requests.
func cmdRegister(args []string) int {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	socket := fs.String("socket", "", "registration socket (required)")
	driver := fs.String("driver-name", defaultDriver, "expected driver name")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *socket == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakelet register: --socket is required, no positional arguments")
		return exitUsage
	}
	reg, err := registerLikeKubelet(context.Background(), *socket, *driver, nil,
		func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	if reg.client != nil {
		_ = reg.client.Close()
	}
	if err != nil && reg.info.Name == "" {
		printJSON(failure("", *socket, err))
		return exitFailure
	}
	out := struct {
		pluginInfo
		ChosenVersion string `json:"chosen_version"`
		Registered    bool   `json:"registered"`
		Error         string `json:"error"`
	}{pluginInfo: reg.info, ChosenVersion: reg.service, Registered: err == nil}
	if err != nil {
		out.Error = err.Error()
	}
	printJSON(out)
	if !out.Registered {
		return exitFailure
	}
	return exitOK
}

func claimFlags(name string, args []string) (endpoint, service, api string, claims []claimRef, code int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	ep := fs.String("endpoint", "", "DRA socket (required)")
	apiFlag := fs.String("api", "v1", "DRA service version: v1 or v1beta1")
	var raw stringList
	fs.Var(&raw, "claim", "namespace/name/uid (repeatable, at least one)")
	if err := fs.Parse(args); err != nil {
		return "", "", "", nil, exitUsage
	}
	if *ep == "" || len(raw) == 0 || fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fakelet %s: --endpoint and at least one --claim are required\n", name)
		return "", "", "", nil, exitUsage
	}
	svc, err := apiService(*apiFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakelet "+name+": "+err.Error())
		return "", "", "", nil, exitUsage
	}
	for _, r := range raw {
		c, err := parseClaim(r)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakelet "+name+": "+err.Error())
			return "", "", "", nil, exitUsage
		}
		claims = append(claims, c)
	}
	return *ep, svc, *apiFlag, claims, exitOK
}

// cmdPrepare: one NodePrepareResources call; the response map on stdout. Fails when the call
// fails or a claim has no entry or an error.
func cmdPrepare(args []string) int {
	endpoint, service, api, claims, code := claimFlags("prepare", args)
	if code != exitOK {
		return code
	}
	client, err := newDRAClient(endpoint, service)
	if err != nil {
		printJSON(failure(api, endpoint, err))
		return exitFailure
	}
	defer func() { _ = client.Close() }()
	resp, err := client.Prepare(context.Background(), claims)
	if err != nil {
		printJSON(failure(api, endpoint, err))
		return exitFailure
	}
	problems := []string{}
	for _, c := range claims {
		r, ok := resp[c.UID]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("claim %s: no entry in the response", c))
		case r.Error != "":
			problems = append(problems, fmt.Sprintf("claim %s: %s", c, r.Error))
		}
	}
	printJSON(struct {
		API      string                   `json:"api"`
		Endpoint string                   `json:"endpoint"`
		Claims   map[string]prepareResult `json:"claims"`
		Problems []string                 `json:"problems"`
	}{api, endpoint, resp, problems})
	if len(problems) > 0 {
		return exitFailure
	}
	return exitOK
}

// cmdUnprepare: one NodeUnprepareResources call, same conventions as cmdPrepare.
func cmdUnprepare(args []string) int {
	endpoint, service, api, claims, code := claimFlags("unprepare", args)
	if code != exitOK {
		return code
	}
	client, err := newDRAClient(endpoint, service)
	if err != nil {
		printJSON(failure(api, endpoint, err))
		return exitFailure
	}
	defer func() { _ = client.Close() }()
	resp, err := client.Unprepare(context.Background(), claims)
	if err != nil {
		printJSON(failure(api, endpoint, err))
		return exitFailure
	}
	problems := []string{}
	if err := checkUnprepareResponse(claims, resp); err != nil {
		problems = strings.Split(err.Error(), "\n")
	}
	printJSON(struct {
		API      string                     `json:"api"`
		Endpoint string                     `json:"endpoint"`
		Claims   map[string]unprepareResult `json:"claims"`
		Problems []string                   `json:"problems"`
	}{api, endpoint, resp, problems})
	if len(problems) > 0 {
		return exitFailure
	}
	return exitOK
}

// cmdCDIResolve: load the CDI directory strictly and inject the given ids.
func cmdCDIResolve(args []string) int {
	fs := flag.NewFlagSet("cdi-resolve", flag.ContinueOnError)
	dir := fs.String("cdi-dir", "", "CDI spec directory (required)")
	var ids stringList
	fs.Var(&ids, "id", "fully qualified CDI device id vendor/class=name (repeatable)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakelet cdi-resolve: --cdi-dir is required, no positional arguments")
		return exitUsage
	}
	edits, err := resolveCDI(*dir, ids)
	if err != nil {
		printJSON(cdiErrorJSON(err))
		return exitFailure
	}
	printJSON(edits)
	return exitOK
}
