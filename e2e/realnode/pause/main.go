// Command pause is the sandbox ("pause") container of the real-kubelet test node: it holds the
// pod's namespaces, reaps orphaned children (it is PID 1 of the pod) and exits on SIGTERM or
// SIGINT. Built locally because no registry is reachable from the test machines.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every exited child; an orphan re-parented to PID 1 must not stay a zombie.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
