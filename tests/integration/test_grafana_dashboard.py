"""Every metric the Grafana dashboard (docker/grafana/dashboards/llmserve.json) queries exists in the live /metrics
of the running stack: the front-end's, and Triton's metrics port for Triton's own and the llm engine's metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import promql_parser
import pytest

from stack import MODEL

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "llmserve.json"
# Triton exports these only where it sees an NVIDIA GPU: the dashboard keeps them in its GPU row.
GPU_ONLY = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}
GPU_ROW = "GPU (Triton on a GPU only)"
# Grafana's own variables, replaced before parsing as Grafana does before sending the query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Series a declared family can have. Names as written (a counter's TYPE line names the stored series: Triton's
# nv_inference_request_success, our llmserve_..._total), not as prometheus_client's parser renames them.
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")
TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)")


def series_names(exposition: str) -> set[str]:
    """The series names a Prometheus scrape of this text stores: samples seen, and every series a declared family
    can have (a labelled counter that nothing incremented yet has no sample, but a query on it is right)."""
    names = set()
    for line in exposition.splitlines():
        if declared := TYPE.match(line):
            name, kind = declared.groups()
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
        elif not line.startswith("#") and (sample := SAMPLE.match(line)):
            names.add(sample.group(1))
    return names


def query_metrics(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: set[str] = set()
    promql_parser.walk(
        promql_parser.parse(expr),
        lambda node: found.add(node.name) if isinstance(node, promql_parser.VectorSelector) else None,
    )
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(row title, expression) for every panel target and the template variables' queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries, row = [], ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        queries += [(row, target["expr"]) for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
        queries.append(("variables", metric))
    return queries


def test_query_parsing_finds_the_series_names():
    assert query_metrics(
        'histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{model=~"$model"}'
        "[$__rate_interval]))) / clamp_min(sum(rate(b_total[$__range])), 1e-9)"
    ) == {"a_seconds_bucket", "b_total"}
    assert series_names('# TYPE x counter\n# TYPE y_total counter\n# TYPE h histogram\nh_count 1\nz{a="b"} 2\n') == {
        "x",
        "y_total",
        "h_bucket",
        "h_sum",
        "h_count",
        "z",
    }


@pytest.fixture(scope="module")
def live_series(stack, client) -> tuple[set[str], set[str]]:
    """The front-end's and Triton's series after one streamed chat, so that histograms have samples."""
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    frontend = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    triton = httpx.get(f"http://127.0.0.1:{stack.triton_metrics_port}/metrics", timeout=10).text
    return series_names(frontend), series_names(triton)


def test_every_dashboard_metric_is_served_by_the_running_stack(live_series):
    frontend, triton = live_series
    queries = dashboard_queries()
    assert len(queries) >= 30
    checked, missing = set(), []
    for row, expr in queries:
        for metric in query_metrics(expr):
            if metric in GPU_ONLY:
                assert row == GPU_ROW, f"{metric} (GPU only) is queried outside the GPU row: {expr}"
                continue
            source = frontend if metric.startswith("llmserve_") else triton
            if metric not in source:
                missing.append(f"{metric} ({row}: {expr})")
            checked.add(metric)
    assert not missing, "queried but not served:\n" + "\n".join(missing)
    # Both sources are really used, histograms through their buckets, and the GPU-only ones are absent on CPU.
    assert {
        "llmserve_time_to_first_token_seconds_bucket",
        "llmserve_inter_token_latency_seconds_bucket",
        "llmserve_completion_tokens_total",
        "llmserve_generations_in_flight",
    } <= checked
    assert {
        "nv_inference_request_success",
        "nv_inference_pending_request_count",
        "llm_engine_active_requests",
    } <= checked
    assert not GPU_ONLY & triton


def test_histogram_quantiles_read_buckets():
    """histogram_quantile over anything but a _bucket series would plot nothing."""
    quantiles = 0
    for _row, expr in dashboard_queries():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)

        def visit(node):
            nonlocal quantiles
            if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
                quantiles += 1
                names: list[str] = []
                promql_parser.walk(
                    node.args[1],
                    lambda n: names.append(n.name) if isinstance(n, promql_parser.VectorSelector) else None,
                )
                assert names and all(name.endswith("_bucket") for name in names), names

        promql_parser.walk(promql_parser.parse(expr), visit)
    assert quantiles >= 8
