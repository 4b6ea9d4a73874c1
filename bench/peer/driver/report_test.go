package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentileIsNearestRank(t *testing.T) {
	var values []time.Duration
	for i := 1; i <= 200; i++ {
		values = append(values, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 100 * time.Millisecond}, {99, 198 * time.Millisecond}, {100, 200 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(values, c.p); got != c.want {
			t.Errorf("percentile(1..200 ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("percentile of nothing = %v, want 0", got)
	}
}

func TestParseCPUSecondsCountsAfterTheCommandName(t *testing.T) {
	// A command name with a space and a ')' must not shift the fields: utime 250, stime 50.
	stat := "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 1000 0 0"
	got, err := parseCPUSeconds(stat)
	if err != nil || got != 3.0 {
		t.Fatalf("parseCPUSeconds = %v, %v; want 3 s", got, err)
	}
	if _, err := parseCPUSeconds("4242 (x) S 1"); err == nil {
		t.Error("a short stat line parsed without an error")
	}
}

func TestTableJudgesTheAims(t *testing.T) {
	ours, peer := newResult("ours"), newResult("peer")
	ours.latencies = []time.Duration{time.Millisecond, 2 * time.Millisecond}
	peer.latencies = []time.Duration{5 * time.Millisecond, 9 * time.Millisecond}
	ours.Idle, peer.Idle = memory{RSS: 10 << 10, Anon: 2 << 10, File: 8 << 10}, memory{RSS: 20 << 10, Anon: 12 << 10, File: 8 << 10}
	ours.AfterMark, peer.AfterMark = memory{RSS: 10 << 10, Anon: 4000}, memory{RSS: 40 << 10, Anon: 9000}
	ours.AfterAll, peer.AfterAll = memory{RSS: 10 << 10, Anon: 4500}, memory{RSS: 48 << 10, Anon: 17000}
	ours.summarize()
	peer.summarize()
	var b strings.Builder
	writeTable(&b, rows(ours, peer, 10000, 1000, []int{1, 8}), ours, peer)
	table := b.String()
	for _, want := range []string{
		"| prepare+unprepare p99 | 2.00 ms | 9.00 ms | 0.22 | ≤ 0.33: met |",
		"| RSS idle | 10.0 MiB | 20.0 MiB | 0.50 | ≤ 0.25: **missed** |",
		"| RSS after 10,000 cycles | 10.0 MiB | 48.0 MiB | 0.21 | ≤ 0.25: met |",
		"| of the RSS idle: RssAnon (heap, stacks) | 2.0 MiB | 12.0 MiB | 0.17 |  |",
		"| of the RSS idle: RssFile (mapped binary, libraries) | 8.0 MiB | 8.0 MiB | 1.00 |  |",
		"| heap+stack growth (RssAnon), 1,000 to 10,000 cycles | +500 KiB | +8000 KiB | – | none (≤ 128 KiB): **missed** |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks the row\n%s\ngot:\n%s", want, table)
		}
	}
}
