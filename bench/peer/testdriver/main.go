// Command dra-test-driver is the Kubernetes DRA test driver (k8s.io/kubernetes/test/e2e/dra/test-driver),
// built from the published Go modules as the peer of `make bench-peer`.
//
// The upstream command is a `main` package and cannot be imported, so this file repeats its
// few lines: the same command tree (app.NewCommand, with its `kubelet-plugin` mode), run the
// same way, with the same registrations for JSON logs and client metrics, so the process
// does what the upstream binary does.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo/leaderelection"
	_ "k8s.io/component-base/metrics/prometheus/restclient"
	_ "k8s.io/component-base/metrics/prometheus/version"
	_ "k8s.io/component-base/metrics/prometheus/workqueue"
	"k8s.io/kubernetes/test/e2e/dra/test-driver/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
