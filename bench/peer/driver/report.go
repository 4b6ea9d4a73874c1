package main

// The numbers of one plugin, their summary, and the side-by-side table.

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// Aims of issue 15: ours against the peer.
const (
	p99Aim = 1.0 / 3
	rssAim = 1.0 / 4
	// growthNoiseKiB: RssAnon moves in pages and allocators keep freed memory, so two readings
	// of a steady process differ a little; growth above this over 9,000 cycles (15 bytes per
	// cycle) is growth.
	growthNoiseKiB = 128
)

// result holds what was measured for one plugin.
type result struct {
	Label      string          `json:"label"`
	Registered []time.Duration `json:"registeredNs"`
	Idle       memory          `json:"idle"`
	AfterMark  memory          `json:"afterMark"`
	AfterAll   memory          `json:"afterAll"`
	CPUPer1000 float64         `json:"cpuSecondsPer1000Cycles"`
	// ClaimsPerSecond by concurrency.
	ClaimsPerSecond map[int]float64 `json:"claimsPerSecond"`
	P50             time.Duration   `json:"p50Ns"`
	P99             time.Duration   `json:"p99Ns"`
	Max             time.Duration   `json:"maxNs"`
	latencies       []time.Duration
	timings         []timing
}

func newResult(label string) *result {
	return &result{Label: label, ClaimsPerSecond: map[int]float64{}}
}

// summarize fills P50, P99 and Max from the recorded latencies.
func (r *result) summarize() {
	sorted := append([]time.Duration(nil), r.latencies...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	r.P50, r.P99 = percentile(sorted, 50), percentile(sorted, 99)
	if len(sorted) > 0 {
		r.Max = sorted[len(sorted)-1]
	}
}

// percentile is the nearest-rank percentile of sorted values (0 for none).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func median(values []time.Duration) time.Duration {
	sorted := append([]time.Duration(nil), values...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return percentile(sorted, 50)
}

// row is one line of the table: the two values, how to print them, and an aim on the ratio
// (0: none).
type row struct {
	name       string
	ours, peer float64
	format     func(float64) string
	// aim, when set, is the largest acceptable ours/peer ratio.
	aim float64
}

func ms(v float64) string  { return fmt.Sprintf("%.2f ms", v) }
func mib(v float64) string { return fmt.Sprintf("%.1f MiB", v/1024) }
func kib(v float64) string { return fmt.Sprintf("%+.0f KiB", v) }
func plain(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
func seconds(v float64) string { return fmt.Sprintf("%.2f s", v) }

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rows builds the table from the two results; `cycles` and `mark` name the memory rows.
func rows(ours, peer *result, cycles, mark int, concurrencies []int) []row {
	out := []row{
		{name: fmt.Sprintf("start to registered (median of %d starts)", len(ours.Registered)),
			ours: millis(median(ours.Registered)), peer: millis(median(peer.Registered)), format: ms},
		{name: "prepare+unprepare p50", ours: millis(ours.P50), peer: millis(peer.P50), format: ms},
		{name: "prepare+unprepare p99", ours: millis(ours.P99), peer: millis(peer.P99), format: ms, aim: p99Aim},
		{name: "prepare+unprepare max", ours: millis(ours.Max), peer: millis(peer.Max), format: ms},
	}
	for _, c := range concurrencies {
		out = append(out, row{name: fmt.Sprintf("claims per second, concurrency %d", c),
			ours: ours.ClaimsPerSecond[c], peer: peer.ClaimsPerSecond[c], format: plain})
	}
	return append(out,
		row{name: "CPU seconds per 1,000 cycles", ours: ours.CPUPer1000, peer: peer.CPUPer1000, format: seconds},
		row{name: "RSS idle", ours: float64(ours.Idle.RSS), peer: float64(peer.Idle.RSS), format: mib, aim: rssAim},
		row{name: fmt.Sprintf("RSS after %s cycles", thousands(mark)), ours: float64(ours.AfterMark.RSS),
			peer: float64(peer.AfterMark.RSS), format: mib, aim: rssAim},
		row{name: fmt.Sprintf("RSS after %s cycles", thousands(cycles)), ours: float64(ours.AfterAll.RSS),
			peer: float64(peer.AfterAll.RSS), format: mib, aim: rssAim},
		// What the RSS is made of: a binary's mapped text counts in full once the kernel maps it
		// in large page-cache folios, whatever part of it runs.
		row{name: "of the RSS idle: RssAnon (heap, stacks)", ours: float64(ours.Idle.Anon),
			peer: float64(peer.Idle.Anon), format: mib},
		row{name: "of the RSS idle: RssFile (mapped binary, libraries)", ours: float64(ours.Idle.File),
			peer: float64(peer.Idle.File), format: mib},
		row{name: fmt.Sprintf("of the RSS after %s cycles: RssAnon", thousands(cycles)), ours: float64(ours.AfterAll.Anon),
			peer: float64(peer.AfterAll.Anon), format: mib},
		row{name: fmt.Sprintf("heap+stack growth (RssAnon), %s to %s cycles", thousands(mark), thousands(cycles)),
			ours: float64(ours.AfterAll.Anon) - float64(ours.AfterMark.Anon),
			peer: float64(peer.AfterAll.Anon) - float64(peer.AfterMark.Anon), format: kib},
	)
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// writeTable prints the Markdown table: metric, ours, peer, ours / peer, and the aim with
// whether it is met. The last line judges growth, which has no ratio.
func writeTable(w io.Writer, rs []row, ours, peer *result) {
	fmt.Fprintf(w, "| metric | %s | %s | %s / %s | aim |\n|---|---:|---:|---:|---|\n",
		ours.Label, peer.Label, ours.Label, peer.Label)
	for _, r := range rs {
		ratio := "–"
		if r.peer != 0 && !strings.HasPrefix(r.name, "heap+stack growth") {
			ratio = fmt.Sprintf("%.2f", r.ours/r.peer)
		}
		aim := ""
		if r.aim > 0 {
			verdict := "met"
			if r.peer == 0 || r.ours/r.peer > r.aim {
				verdict = "**missed**"
			}
			aim = fmt.Sprintf("≤ %.2f: %s", r.aim, verdict)
		}
		if strings.HasPrefix(r.name, "heap+stack growth") {
			verdict := "met"
			if r.ours > growthNoiseKiB {
				verdict = "**missed**"
			}
			aim = fmt.Sprintf("none (≤ %d KiB): %s", growthNoiseKiB, verdict)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.name, r.format(r.ours), r.format(r.peer), ratio, aim)
	}
}

// traceCSV is every latency cycle of every plugin, a line each.
func traceCSV(runs []*run) []byte {
	var b strings.Builder
	b.WriteString("plugin,start_unix_ns,prepare_ns,unprepare_ns\n")
	for _, r := range runs {
		for _, t := range r.result.timings {
			fmt.Fprintf(&b, "%s,%d,%d,%d\n", r.label, t.began.UnixNano(), t.prepare.Nanoseconds(), t.unprepare.Nanoseconds())
		}
	}
	return []byte(b.String())
}
