package main

// Prepare + unprepare cycles over the DRA socket, as the kubelet calls them for a pod that
// starts and ends.

import (
	"context"
	"fmt"
	"sync"
	"time"

	drav1 "k8s.io/kubelet/pkg/apis/dra/v1"
)

// callTimeout bounds each gRPC call, like the kubelet's deadline on plugin calls.
const callTimeout = 10 * time.Second

// timing is one cycle: when it began and how long each call took.
type timing struct {
	began     time.Time
	prepare   time.Duration
	unprepare time.Duration
}

// cycle prepares one claim and unprepares it again; it returns the time of both calls and
// fails when either call or the claim's answer reports an error, or prepare returns no device.
func cycle(ctx context.Context, dra drav1.DRAPluginClient, claim *drav1.Claim) (time.Duration, error) {
	t, err := timedCycle(ctx, dra, claim)
	return t.prepare + t.unprepare, err
}

// timedCycle is cycle with the time of each call.
func timedCycle(ctx context.Context, dra drav1.DRAPluginClient, claim *drav1.Claim) (timing, error) {
	began := time.Now()
	pctx, cancel := context.WithTimeout(ctx, callTimeout)
	prepared, err := dra.NodePrepareResources(pctx, &drav1.NodePrepareResourcesRequest{Claims: []*drav1.Claim{claim}})
	cancel()
	preparedAt := time.Now()
	if err != nil {
		return timing{}, fmt.Errorf("NodePrepareResources of claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	uctx, cancel := context.WithTimeout(ctx, callTimeout)
	unprepared, err := dra.NodeUnprepareResources(uctx, &drav1.NodeUnprepareResourcesRequest{Claims: []*drav1.Claim{claim}})
	cancel()
	t := timing{began: began, prepare: preparedAt.Sub(began), unprepare: time.Since(preparedAt)}
	if err != nil {
		return timing{}, fmt.Errorf("NodeUnprepareResources of claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	p := prepared.GetClaims()[claim.Uid]
	if p == nil || p.Error != "" || len(p.Devices) != 1 {
		return timing{}, fmt.Errorf("prepare of claim %s/%s answered %v, want one device and no error",
			claim.Namespace, claim.Name, p)
	}
	if u := unprepared.GetClaims()[claim.Uid]; u == nil || u.Error != "" {
		return timing{}, fmt.Errorf("unprepare of claim %s/%s answered %v, want no error", claim.Namespace, claim.Name, u)
	}
	return t, nil
}

// run is one plugin's claims and its measurements.
type run struct {
	*plugin
	claims []*drav1.Claim
	result *result
}

// latencyPhase runs `cycles` sequential cycles on each plugin, alternating one cycle of one with
// one of the other (the first of each pair alternates too), all on the first claim. After
// `mark` cycles and at the end it reads each plugin's memory; CPU time is read at both ends.
func latencyPhase(ctx context.Context, runs []*run, cycles, mark int, progress func(string)) error {
	cpu0 := make([]float64, len(runs))
	for i, r := range runs {
		var err error
		if cpu0[i], err = cpuSeconds(r.pid()); err != nil {
			return err
		}
		r.result.latencies = make([]time.Duration, 0, cycles)
		r.result.timings = make([]timing, 0, cycles)
	}
	report := time.Now()
	for n := 0; n < cycles; n++ {
		for k := range runs {
			r := runs[(n+k)%len(runs)]
			t, err := timedCycle(ctx, r.dra, r.claims[0])
			if err != nil {
				return fmt.Errorf("%s, cycle %d: %w", r.label, n+1, err)
			}
			r.result.latencies = append(r.result.latencies, t.prepare+t.unprepare)
			r.result.timings = append(r.result.timings, t)
		}
		if n+1 == mark {
			for _, r := range runs {
				m, err := readMemory(r.pid())
				if err != nil {
					return err
				}
				r.result.AfterMark = m
			}
		}
		if time.Since(report) > 10*time.Second {
			progress(fmt.Sprintf("latency: %d of %d cycles per plugin", n+1, cycles))
			report = time.Now()
		}
	}
	for i, r := range runs {
		cpu, err := cpuSeconds(r.pid())
		if err != nil {
			return err
		}
		r.result.CPUPer1000 = (cpu - cpu0[i]) * 1000 / float64(cycles)
		if r.result.AfterAll, err = readMemory(r.pid()); err != nil {
			return err
		}
	}
	return nil
}

// throughputPhase measures cycles per second with `concurrency` workers, each cycling its own
// claim (its own device). The plugins take turns in `blocks` blocks of `perBlock` cycles each,
// so that a change in the machine's load during the phase weighs on both alike.
func throughputPhase(ctx context.Context, runs []*run, concurrency, blocks, perBlock int) error {
	elapsed := make([]time.Duration, len(runs))
	for b := 0; b < blocks; b++ {
		for k := range runs {
			i := (b + k) % len(runs)
			r := runs[i]
			if len(r.claims) < concurrency {
				return fmt.Errorf("%s: %d claims for concurrency %d", r.label, len(r.claims), concurrency)
			}
			began := time.Now()
			if err := parallelCycles(ctx, r, concurrency, perBlock); err != nil {
				return fmt.Errorf("%s, concurrency %d: %w", r.label, concurrency, err)
			}
			elapsed[i] += time.Since(began)
		}
	}
	for i, r := range runs {
		r.result.ClaimsPerSecond[concurrency] = float64(blocks*perBlock) / elapsed[i].Seconds()
	}
	return nil
}

// parallelCycles runs `total` cycles spread over `workers` goroutines, worker w on claim w.
func parallelCycles(ctx context.Context, r *run, workers, total int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		share := total / workers
		if w < total%workers {
			share++
		}
		wg.Add(1)
		go func(claim *drav1.Claim, share int) {
			defer wg.Done()
			for n := 0; n < share; n++ {
				if _, err := cycle(ctx, r.dra, claim); err != nil {
					errs <- err
					return
				}
			}
		}(r.claims[w], share)
	}
	wg.Wait()
	close(errs)
	return <-errs
}
