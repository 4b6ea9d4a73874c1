"""Unit tests of the scale bench's pure half: `python3 -m unittest discover benches/scale`."""

import math
import unittest
import xml.etree.ElementTree as ET

import report

SCRAPE_0 = """# HELP apiserver_request_total x
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",group="",resource="nodes",scope="resource",subresource="",verb="GET",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",group="mock-accel.example.com",resource="mockaccelnodes",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 100
apiserver_request_total{code="201",component="apiserver",group="",resource="nodes",scope="resource",subresource="",verb="GET",version="v1"} 5
x_duration_seconds_bucket{le="0.005"} 10
x_duration_seconds_bucket{le="0.01"} 10
x_duration_seconds_bucket{le="+Inf"} 10
"""

SCRAPE_1 = """apiserver_request_total{code="200",component="apiserver",group="",resource="nodes",scope="resource",subresource="",verb="GET",version="v1"} 70
apiserver_request_total{code="200",component="apiserver",group="mock-accel.example.com",resource="mockaccelnodes",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 160
apiserver_request_total{code="201",component="apiserver",group="",resource="nodes",scope="resource",subresource="",verb="GET",version="v1"} 5
x_duration_seconds_bucket{le="0.005"} 60
x_duration_seconds_bucket{le="0.01"} 108
x_duration_seconds_bucket{le="+Inf"} 110
"""


class ReportTest(unittest.TestCase):
    def test_requests_per_minute_by_verb_and_resource(self):
        a0, a1 = report.parse_metrics(SCRAPE_0), report.parse_metrics(SCRAPE_1)
        rates = report.per_minute(report.api_requests(a0), report.api_requests(a1), 30)
        self.assertEqual(rates, {("GET", "nodes"): 120.0, ("APPLY", "mockaccelnodes/status"): 120.0})

    def test_p99_is_the_bound_of_the_bucket_it_falls_in(self):
        a0, a1 = report.parse_metrics(SCRAPE_0), report.parse_metrics(SCRAPE_1)
        # 100 observations in the window: 50 ≤ 5 ms, 48 more ≤ 10 ms, 2 above.
        self.assertEqual(report.histogram_quantile(a0, a1, "x_duration_seconds", 0.5), 0.005)
        self.assertEqual(report.histogram_quantile(a0, a1, "x_duration_seconds", 0.98), 0.01)
        self.assertEqual(report.histogram_quantile(a0, a1, "x_duration_seconds", 0.99), math.inf)
        self.assertIsNone(report.histogram_quantile(a1, a1, "x_duration_seconds", 0.99))

    def test_growth_exponent(self):
        self.assertAlmostEqual(report.growth_exponent([(100, 1.0), (1000, 10.0), (3000, 30.0)]), 1.0)
        self.assertAlmostEqual(report.growth_exponent([(100, 1.0), (1000, 100.0)]), 2.0)
        self.assertIsNone(report.growth_exponent([(100, 1.0)]))

    def test_svg_is_well_formed_and_draws_every_run(self):
        runs = [
            {"nodes": n, "devices_per_node": 6, "publish_s": n / 100, "requests_per_min": 12.0 * n,
             "controller_rss_mib": 20 + n / 100}
            for n in (100, 1000, 3000)
        ] + [{"nodes": 100, "devices_per_node": 64, "publish_s": 3.0, "requests_per_min": 1500.0,
              "controller_rss_mib": 30.0}]
        svg = report.svg_chart(runs, "title & more")
        root = ET.fromstring(svg)
        ns = "{http://www.w3.org/2000/svg}"
        self.assertEqual(len(root.findall(f"{ns}polyline")), 3)
        self.assertEqual(len(root.findall(f"{ns}circle")), 3 * 3 + 1)
        self.assertEqual(len([r for r in root.findall(f"{ns}rect") if r.get("fill") == "#d62728"]), 3 + 1)

    def test_markdown_has_a_row_per_run_and_the_growth(self):
        def run(n, cpu):
            return {"nodes": n, "devices_per_node": 6, "slices": 4 * n, "publish_s": n / 50, "steady_s": 120.0,
                    "requests_per_min": 24.0 * n, "slice_writes_per_min": 0.0, "requests_per_node_per_beat": 4.0,
                    "apiserver_cpu_ms_per_beat": 2.0, "controller_cpu_ms_per_beat": 0.5,
                    "controller_rss_mib": 20 + n / 100, "controller_cpu_pct": cpu, "reconcile_p99_s": 0.04,
                    "apiserver_cpu_pct": cpu * 4, "max_late_s": 0.1, "reconciles_per_min": n / 10,
                    "load_before": 1.5, "load_after": 2.25, "controller_cpu_publish_s": n / 100,
                    "requests_by_verb_resource": {("GET", "nodes"): 6.0 * n, ("WATCH", "nodes"): 0.1}}
        md = report.markdown_tables([run(100, 1.0), run(1000, 10.0)])
        self.assertIn("| 1,000 | 6 | 4,000 | 20.0 s | 10.0 s | 24,000 | 0 | 4.00, 2.00 ms, 0.50 ms | 100 | 30 MiB |", md)
        self.assertIn("| 40 % | 0.1 s | 1.5, 2.2 |", md)
        self.assertIn("| GET | nodes | 6,000 |", md)
        self.assertNotIn("WATCH", md)
        self.assertIn("- controller CPU: k = 1.00", md)
        self.assertIn("- controller CPU while publishing: k = 1.00\n", md)
        three = report.markdown_tables([run(100, 1.0), run(1000, 10.0), {**run(3000, 90.0), "publish_s": 540.0}])
        self.assertIn("- controller CPU: k = 1.32 (100 → 1,000: 1.00; 1,000 → 3,000: 2.00)", three)
        self.assertIn("- time to publish: k = 1.65 (100 → 1,000: 1.00; 1,000 → 3,000: 3.00)", three)

        before = [{**run(1000, 20.0), "publish_s": 75.0, "requests_per_min": 4000.0, "reconciles_per_min": 1000.0}]
        table = report.comparison_table(before, [run(100, 1.0), run(1000, 10.0)])
        self.assertEqual(table.count("\n| 1,000 × 6 |"), 1, "only sizes measured in both: " + table)
        self.assertIn("| 75.0 s → 20.0 s | 10.0 s → 10.0 s | 4,000 → 24,000 |", table)
        self.assertIn("| 1,000 → 100 |", table)

    def test_a_baseline_is_drawn_dashed_beside_the_runs(self):
        def run(n):
            return {"nodes": n, "devices_per_node": 6, "publish_s": n / 10, "requests_per_min": 4.0 * n,
                    "controller_rss_mib": 20.0}
        svg = report.svg_chart([run(100), run(1000)], "t", [run(100), run(1000), run(3000)], ("after", "before"))
        root = ET.fromstring(svg)
        ns = "{http://www.w3.org/2000/svg}"
        dashed = [p for p in root.findall(f"{ns}polyline") if p.get("stroke-dasharray")]
        self.assertEqual(len(dashed), 3)
        self.assertIn("before, dashed", svg)


if __name__ == "__main__":
    unittest.main()
