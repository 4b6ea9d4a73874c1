"""The pure half of the controller scale bench (`make bench-scale`): reading Prometheus text,
turning two scrapes into rates, a p99 from histogram buckets, how a cost grows with N, and the
SVG chart and Markdown tables of the results. No I/O beyond the strings handed in.
"""

import math
import re
from html import escape

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def sum_by(samples, name: str, keys: tuple[str, ...], where=None) -> dict[tuple, float]:
    """Sum of the samples of metric `name` grouped by the label values `keys`."""
    out: dict[tuple, float] = {}
    for n, labels, v in samples:
        if n != name or (where and not where(labels)):
            continue
        k = tuple(labels.get(x, "") for x in keys)
        out[k] = out.get(k, 0.0) + v
    return out


def value(samples, name: str, where=None) -> float:
    return sum(sum_by(samples, name, (), where).values())


def per_minute(before: dict, after: dict, seconds: float) -> dict:
    """Rates per minute of counters between two scrapes, zero rates left out."""
    out = {}
    for k, v in after.items():
        d = v - before.get(k, 0.0)
        if d > 0:
            out[k] = d * 60.0 / seconds
    return out


def api_requests(samples) -> dict[tuple[str, str], float]:
    """`apiserver_request_total` by (verb, resource[/subresource]); watches and the API server's
    own requests to itself are kept (they are part of the load)."""
    raw = sum_by(samples, "apiserver_request_total", ("verb", "resource", "subresource"))
    out: dict[tuple[str, str], float] = {}
    for (verb, resource, sub), v in raw.items():
        key = (verb, f"{resource}/{sub}" if sub else resource)
        out[key] = out.get(key, 0.0) + v
    return out


def histogram_quantile(before, after, name: str, q: float) -> float | None:
    """The `q` quantile of histogram `name` over the window between two scrapes, as the upper
    bound of the bucket it falls in (seconds); None when nothing was observed."""
    def buckets(samples):
        return {float(k[0]) if k[0] != "+Inf" else math.inf: v
                for k, v in sum_by(samples, f"{name}_bucket", ("le",)).items()}
    b0, b1 = buckets(before), buckets(after)
    edges = sorted(b1)
    counts = [(le, b1[le] - b0.get(le, 0.0)) for le in edges]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    for le, c in counts:
        if c >= q * total:
            return le
    return math.inf


def growth_exponent(points: list[tuple[float, float]]) -> float | None:
    """The exponent k of cost ~ N^k fitted through the first and last point: 1 is linear,
    0 constant, above 1 faster than linear."""
    pts = [(n, c) for n, c in points if n > 0 and c > 0]
    if len(pts) < 2:
        return None
    (n0, c0), (n1, c1) = pts[0], pts[-1]
    if n1 == n0:
        return None
    return math.log(c1 / c0) / math.log(n1 / n0)


# ---- SVG --------------------------------------------------------------------------------------

def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k".replace(".0k", "k")
    if v == int(v):
        return f"{int(v)}"
    return f"{v:.1f}"


def svg_chart(runs: list[dict], title: str, baseline: list[dict] | None = None,
              labels: tuple[str, str] = ("", "")) -> str:
    """Three panels side by side, each a line over N on a logarithmic axis: time from controller
    start to every slice published, API requests per minute at steady state, controller RSS.
    `runs`: dicts with nodes, devices_per_node, publish_s, requests_per_min, controller_rss_mib;
    runs with other than 6 devices per node are drawn as separate marked points. `baseline`
    (runs of another build, e.g. before a change) is drawn as a grey dashed line and hollow
    marks; `labels` name the two in the legend."""
    baseline = baseline or []
    panels = [
        ("publish_s", "time to publish all slices (s)"),
        ("requests_per_min", "API requests per minute, steady state"),
        ("controller_rss_mib", "controller RSS (MiB)"),
    ]
    pw, ph, ml, mt, mb, gap = 260, 200, 50, 46, 46, 30
    width = ml + len(panels) * (pw + gap + ml) - gap
    height = mt + ph + mb + 24
    base = sorted((r for r in runs if r["devices_per_node"] == 6), key=lambda r: r["nodes"])
    other = [r for r in runs if r["devices_per_node"] != 6]
    old_base = sorted((r for r in baseline if r["devices_per_node"] == 6), key=lambda r: r["nodes"])
    old_other = [r for r in baseline if r["devices_per_node"] != 6]
    ns = sorted({r["nodes"] for r in runs + baseline}) or [1]
    lo, hi = math.log10(min(ns)), math.log10(max(ns))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for p, (key, label) in enumerate(panels):
        x0 = ml + p * (pw + gap + ml)
        y0 = mt
        vmax = _nice_max(max([r.get(key) or 0 for r in runs + baseline] + [0]))

        def sx(n, x0=x0):
            return x0 + (math.log10(n) - lo) / (hi - lo) * pw

        def sy(v, vmax=vmax):
            return y0 + ph - (v / vmax) * ph

        out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 8}" text-anchor="middle">{escape(label)}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for i in range(5):
            v = vmax * i / 4
            y = sy(v)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
        for n in ns:
            x = sx(n)
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + ph}" stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + ph + 14}" text-anchor="middle">{_fmt(n)}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 30}" text-anchor="middle">nodes (N, log scale)</text>')
        old = [(sx(r["nodes"]), sy(r[key])) for r in old_base if r.get(key) is not None]
        if len(old) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in old)
            out.append(f'<polyline points="{path}" fill="none" stroke="#999" stroke-width="2" '
                       'stroke-dasharray="5,4"/>')
        for x, y in old:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="white" stroke="#999" stroke-width="1.5"/>')
        for r in old_other:
            if r.get(key) is None:
                continue
            x, y = sx(r["nodes"]), sy(r[key])
            out.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="white" stroke="#999" stroke-width="1.5"/>')
        pts = [(sx(r["nodes"]), sy(r[key])) for r in base if r.get(key) is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#1f77b4"/>')
        for r in other:
            if r.get(key) is None:
                continue
            x, y = sx(r["nodes"]), sy(r[key])
            out.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#d62728"/>')
    ly = mt + ph + mb + 10
    now, before = labels
    suffix = f" ({now})" if now else ""
    out.append(f'<circle cx="{ml + 6}" cy="{ly - 4}" r="3.5" fill="#1f77b4"/>'
               f'<text x="{ml + 14}" y="{ly}">6 devices per node{escape(suffix)}</text>')
    if other:
        m = sorted({r["devices_per_node"] for r in other})
        out.append(f'<rect x="{ml + 250}" y="{ly - 8}" width="8" height="8" fill="#d62728"/>'
                   f'<text x="{ml + 262}" y="{ly}">{", ".join(map(str, m))} devices per node{escape(suffix)}</text>')
    if baseline:
        out.append(f'<circle cx="{ml + 506}" cy="{ly - 4}" r="3.5" fill="white" stroke="#999" stroke-width="1.5"/>'
                   f'<text x="{ml + 514}" y="{ly}">{escape(before or "baseline")}, dashed</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---- Markdown ---------------------------------------------------------------------------------

def markdown_tables(runs: list[dict]) -> str:
    """The per-run table, the steady-state request table and the growth line."""
    lines = [
        "| nodes | devices/node | slices | time to publish | controller CPU while publishing | requests/min (steady) | "
        "ResourceSlice writes/min (steady) | per node and heartbeat: requests, API server CPU, controller CPU | "
        "reconciles/min (steady) | controller RSS | controller CPU (steady) | reconcile p99 | "
        "API server CPU (steady) | late beats | load average (1 min) before, after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["devices_per_node"], r["nodes"])):
        p99 = r.get("reconcile_p99_s")
        lines.append(
            f"| {r['nodes']:,} | {r['devices_per_node']} | {r['slices']:,} | {_publish(r)} | {_publish_cpu(r)} | "
            f"{r['requests_per_min']:,.0f} | {r['slice_writes_per_min']:.0f} | "
            f"{r['requests_per_node_per_beat']:.2f}, {r['apiserver_cpu_ms_per_beat']:.2f} ms, "
            f"{r['controller_cpu_ms_per_beat']:.2f} ms | {r.get('reconciles_per_min', 0):,.0f} | "
            f"{r['controller_rss_mib']:.0f} MiB | "
            f"{r['controller_cpu_pct']:.1f} % | {'≤ ' + _ms(p99) if p99 is not None else 'n/a'} | "
            f"{r['apiserver_cpu_pct']:.0f} % | {r['max_late_s']:.1f} s | {_loads(r)} |")
    out = "\n".join(lines) + "\n"
    for r in sorted(runs, key=lambda r: (r["devices_per_node"], r["nodes"])):
        rows = sorted(r["requests_by_verb_resource"].items(), key=lambda kv: -kv[1])
        out += (f"\nSteady state, {r['nodes']:,} nodes × {r['devices_per_node']} devices, "
                f"{r['steady_s']:.0f} s window, requests per minute by verb and resource:\n\n"
                "| verb | resource | per minute |\n|---|---|---:|\n")
        out += "".join(f"| {verb} | {res} | {v:,.0f} |\n" for (verb, res), v in rows if v >= 0.5)
    base = sorted((r for r in runs if r["devices_per_node"] == 6), key=lambda r: r["nodes"])
    if len(base) >= 2:
        out += ("\nGrowth with N (exponent k of cost ∝ N^k between the smallest and largest run, and between "
                "each run and the next; 1 is linear):\n\n")
        for key, label in (("publish_s", "time to publish"),
                           ("controller_cpu_publish_s", "controller CPU while publishing"),
                           ("requests_per_min", "requests per minute"),
                           ("controller_rss_mib", "controller RSS"), ("controller_cpu_pct", "controller CPU"),
                           ("apiserver_cpu_pct", "API server CPU")):
            points = [(r["nodes"], r.get(key, 0.0)) for r in base]
            k = growth_exponent(points)
            steps = [(a[0], b[0], growth_exponent([a, b])) for a, b in zip(points, points[1:])]
            steps_text = "; ".join(f"{n0:,} → {n1:,}: {s:.2f}" for n0, n1, s in steps if s is not None)
            out += (f"- {label}: k = {k:.2f}" + (f" ({steps_text})" if len(steps) > 1 else "") + "\n"
                    if k is not None else f"- {label}: n/a\n")
    return out


def comparison_table(before: list[dict], after: list[dict]) -> str:
    """Before and after, one row per size measured in both, each cell `before → after`."""
    rows = []
    for a in sorted(after, key=lambda r: (r["devices_per_node"], r["nodes"])):
        b = next((r for r in before if (r["nodes"], r["devices_per_node"]) == (a["nodes"], a["devices_per_node"])), None)
        if b is None:
            continue

        def cell(key, fmt):
            return f"{fmt(b[key])} → {fmt(a[key])}"

        def p99(r):
            v = r.get("reconcile_p99_s")
            return "≤ " + _ms(v) if v is not None else "n/a"

        rows.append(
            f"| {a['nodes']:,} × {a['devices_per_node']} | {_publish(b)} → {_publish(a)} | "
            f"{_publish_cpu(b)} → {_publish_cpu(a)} | "
            f"{cell('requests_per_min', lambda v: f'{v:,.0f}')} | "
            f"{cell('requests_per_node_per_beat', lambda v: f'{v:.2f}')} | "
            f"{cell('reconciles_per_min', lambda v: f'{v:,.0f}')} | "
            f"{cell('controller_rss_mib', lambda v: f'{v:.0f} MiB')} | "
            f"{cell('controller_cpu_pct', lambda v: f'{v:.1f} %')} | "
            f"{p99(b)} → {p99(a)} | {cell('apiserver_cpu_pct', lambda v: f'{v:.0f} %')} |")
    if not rows:
        return ""
    return ("| nodes × devices | time to publish | controller CPU while publishing | requests/min (steady) | "
            "requests per node and heartbeat | reconciles/min (steady) | controller RSS | controller CPU | "
            "reconcile p99 | API server CPU |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")


def _publish_cpu(r: dict) -> str:
    """CPU seconds the controller used from its start until every slice was published (not
    measured by earlier versions of the bench)."""
    v = r.get("controller_cpu_publish_s")
    return f"{v:.1f} s" if v is not None else "n/a"


def _publish(r: dict) -> str:
    if r.get("publish_complete", True):
        return f"{r['publish_s']:.1f} s"
    return f"> {r['publish_s']:.0f} s (not all published)"


def _loads(r: dict) -> str:
    if "load_before" not in r:
        return "n/a"
    return f"{r['load_before']:.1f}, {r['load_after']:.1f}"


def _ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "∞"
    return f"{seconds * 1000:.0f} ms"
