"""helm/llmserve rendered by the real Helm engine (Helm's Go SDK through helm-python-sdk; no cluster here) and every
manifest validated against the Kubernetes API schemas (kubernetes-validate, bundled, offline, strict)."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from frontend_api.storage.keys import KEY_PREFIX, MIN_GIVEN_KEY_LENGTH
from llmserve.settings import LauncherSettings as Settings  # the whole stack's keys (the images set both parts)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llmserve"
EXAMPLES = ROOT / "helm" / "examples"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) that the validator bundles, and its newest.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
DATABASE = {
    "secrets": {"databaseUrl": "postgresql://llmserve:pw@postgres:5432/llmserve", "redisUrl": "redis://redis:6379/0"}
}
DEFAULTS = Settings()


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


SCENARIOS = {
    "default": DATABASE,
    "cpu": merged(DATABASE, example("cpu.yaml")),
    "gpu-tp2": example("gpu-tp2.yaml"),
}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(chart: helm.Chart, values: dict) -> list[dict]:
    """Every Kubernetes object the chart renders (hooks and tests included), NOTES.txt left out."""
    chart.validate_schema(values)
    files = chart.render(values, name="llm", namespace="serving", is_install=True)
    return [
        doc
        for path, text in sorted(files.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_chart_lints_clean():
    report = helm.lint(CHART, DATABASE, strict=True)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_kubernetes(chart, scenario, kube_version):
    objects = render(chart, SCENARIOS[scenario])
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD (Prometheus Operator): no bundled schema; its wiring is checked below
        kubernetes_validate.validate(obj, kube_version, strict=True)  # raises, naming the field
        checked += 1
    assert checked >= 9, f"only {checked} objects rendered for {scenario}"


def test_default_render_wires_triton_and_frontend(chart):
    objects = render(chart, DATABASE)
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    triton = deployments["llm-llmserve-triton"]["spec"]["template"]["spec"]
    frontend = deployments["llm-llmserve-frontend"]["spec"]["template"]["spec"]
    triton_ports = {p["name"]: p["port"] for p in services["llm-llmserve-triton"]["spec"]["ports"]}
    assert triton_ports == {
        "http": DEFAULTS.triton_http_port,
        "grpc": DEFAULTS.triton_grpc_port,
        "metrics": DEFAULTS.triton_metrics_port,
    }
    # Triton: one GPU, probes on its health endpoints, the model volume
    container = triton["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["LLMSERVE_TP_SIZE"]["value"] == "1"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 3600
    # The front-end: `llmserve api` against the Triton Service's gRPC port, secrets from the Secret, auth on
    api = frontend["containers"][0]
    env = env_of(api)
    assert api["command"] == ["llmserve", "api"]
    assert env["LLMSERVE_TRITON_GRPC_URL"]["value"] == f"llm-llmserve-triton:{triton_ports['grpc']}"
    assert env["LLMSERVE_AUTH"]["value"] == "true" and "LLMSERVE_ALLOW_UNAUTHENTICATED_PUBLIC_BIND" not in env
    # SIGTERM drains: the pod's grace period outlasts the drain timeout the front-end is given
    assert frontend["terminationGracePeriodSeconds"] > int(env["LLMSERVE_DRAIN_TIMEOUT_S"]["value"]) == 30
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "llm-llmserve-secrets", "key": "database-url"}
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    assert api["ports"][0]["containerPort"] == DEFAULTS.port
    assert (api["livenessProbe"]["httpGet"]["path"], api["readinessProbe"]["httpGet"]["path"]) == ("/health", "/ready")
    assert frontend["securityContext"]["runAsNonRoot"] is True and api["securityContext"]["readOnlyRootFilesystem"]
    # The front-end reads tokenizers at the same path as Triton, from the same claim
    claim = by_kind(objects, "PersistentVolumeClaim")["llm-llmserve-models"]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    api_mounts = {m["name"]: m["mountPath"] for m in api["volumeMounts"]}
    assert mounts["models"] == api_mounts["models"] == "/srv/llmserve"
    for pod in (triton, frontend):
        assert {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}[
            "models"
        ] == claim
    # HPA on the front-end Deployment (which then leaves replicas to it), PDB over the front-end pods
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["llm-llmserve-frontend"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "llm-llmserve-frontend"
    assert "replicas" not in deployments["llm-llmserve-frontend"]["spec"]
    pdb = by_kind(objects, "PodDisruptionBudget")["llm-llmserve-frontend"]
    pod_labels = deployments["llm-llmserve-frontend"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert services["llm-llmserve-frontend"]["spec"]["selector"].items() <= pod_labels.items()
    assert not by_kind(objects, "Ingress") and not by_kind(objects, "ServiceMonitor")


def test_auth_off_is_an_explicit_public_bind(chart):
    """A pod address is never loopback: `llmserve api` refuses it without auth unless the bind is allowed."""
    objects = render(chart, merged(DATABASE, {"frontend": {"auth": False}}))
    api = by_kind(objects, "Deployment")["llm-llmserve-frontend"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(api)
    assert env["LLMSERVE_AUTH"]["value"] == "false"
    assert env["LLMSERVE_ALLOW_UNAUTHENTICATED_PUBLIC_BIND"]["value"] == "true"


def test_generated_admin_key_is_one_the_server_accepts(chart):
    objects = render(chart, DATABASE)
    secret = by_kind(objects, "Secret")["llm-llmserve-secrets"]["stringData"]
    assert secret["database-url"] == DATABASE["secrets"]["databaseUrl"]
    assert secret["admin-key"].startswith(KEY_PREFIX) and len(secret["admin-key"]) >= MIN_GIVEN_KEY_LENGTH
    job = by_kind(objects, "Job")["llm-llmserve-admin-key"]
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["llmserve", "keys", "create", "--name"]
    key_env = container["command"][container["command"].index("--key-env") + 1]
    assert env_of(container)[key_env]["valueFrom"]["secretKeyRef"]["key"] == "admin-key"


def test_helm_test_pods_list_models_and_chat(chart):
    objects = render(chart, DATABASE)
    tests = {
        name: pod
        for name, pod in by_kind(objects, "Pod").items()
        if pod["metadata"]["annotations"].get("helm.sh/hook") == "test"
    }
    assert set(tests) == {"llm-llmserve-test-models", "llm-llmserve-test-chat"}
    for name, pod in tests.items():
        container = pod["spec"]["containers"][0]
        assert container["command"][:2] == ["python", "-c"]
        script = container["command"][2]
        compile(script, name, "exec")  # the inline check is valid Python
        assert "/v1/models" in script and "Bearer" in script
        assert env_of(container)["URL"]["value"] == f"http://llm-llmserve-frontend:{DEFAULTS.port}"
    assert "/v1/chat/completions" in tests["llm-llmserve-test-chat"]["spec"]["containers"][0]["command"][2]


def test_tensor_parallel_two_asks_two_gpus_per_pod_and_uses_existing_secret(chart):
    objects = render(chart, SCENARIOS["gpu-tp2"])
    triton = by_kind(objects, "Deployment")["llm-llmserve-triton"]
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert triton["spec"]["replicas"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert env_of(container)["LLMSERVE_TP_SIZE"]["value"] == "2"
    assert not by_kind(objects, "Secret"), "an existing Secret is referenced, none is made"
    frontend = by_kind(objects, "Deployment")["llm-llmserve-frontend"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(frontend)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "llmserve-credentials"
    assert env_of(frontend)["LLMSERVE_RATE_LIMIT_RPM"]["value"] == "600"
    ingress = by_kind(objects, "Ingress")["llm-llmserve"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "llm-llmserve-frontend", "port": {"name": "http"}}
    # ServiceMonitors select the Services and name ports they have
    services = by_kind(objects, "Service")
    monitors = by_kind(objects, "ServiceMonitor")
    assert set(monitors) == {"llm-llmserve-frontend", "llm-llmserve-triton"}
    for name, monitor in monitors.items():
        service = services[name]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in service["spec"]["ports"]} and monitor["metadata"]["labels"]["release"]
    assert {m["spec"]["endpoints"][0]["port"] for m in monitors.values()} == {"http", "metrics"}


def test_cpu_variant_runs_llmserve_triton_and_copies_the_tokenizer_out_of_the_image(chart):
    objects = render(chart, SCENARIOS["cpu"])
    triton = by_kind(objects, "Deployment")["llm-llmserve-triton"]["spec"]["template"]["spec"]
    container = triton["containers"][0]
    assert container["image"] == "llmserve-triton-cpu:0.1.0" and container["command"] == ["llmserve", "triton"]
    assert env_of(container)["LLMSERVE_TRITON_ADDRESS"]["value"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not by_kind(objects, "PersistentVolumeClaim")
    frontend = by_kind(objects, "Deployment")["llm-llmserve-frontend"]["spec"]["template"]["spec"]
    init = frontend["initContainers"][0]
    assert init["image"] == container["image"]
    tokenizer_dir = "/srv/llmserve/models/SmolLM2-135M-Instruct"  # where `llmserve prepare` puts it in the image
    assert init["command"][-2:] == [f"{tokenizer_dir}/.", "/tokenizer/"]
    assert {m["mountPath"] for m in frontend["containers"][0]["volumeMounts"]} >= {tokenizer_dir}


def test_no_image_is_unpinned(chart):
    for scenario, values in SCENARIOS.items():
        for obj in render(chart, values):
            spec = obj.get("spec", {}).get("template", {}).get("spec") or obj.get("spec", {})
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                name, _, tag = container["image"].rpartition(":")
                assert name and tag and tag != "latest", (scenario, container["image"])


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"triton": {"tensorParallelSize": 3}}, "tensorParallelSize"),
        ({"triton": {"variant": "tpu"}}, "variant"),
        ({"frontend": {"image": {"tag": "latest"}}}, "tag"),
        ({"frontend": {"replicas": 0}}, "replicas"),
        ({"secrets": {"databaseUrl": "mysql://db/llmserve"}}, "databaseUrl"),
        ({"secrets": {"adminKey": "hunter2"}}, "adminKey"),
        ({"frontend": {"workerz": 2}}, "workerz"),
        ({"frontend": {"drainTimeoutSeconds": -1}}, "drainTimeoutSeconds"),
    ],
)
def test_schema_rejects_bad_values(chart, bad, field):
    with pytest.raises(helm.HelmError, match=field):
        chart.render(merged(DATABASE, bad), name="llm", namespace="serving", is_install=True)


def test_database_is_required_without_an_existing_secret(chart):
    with pytest.raises(helm.HelmError, match="secrets.databaseUrl"):
        chart.render({}, name="llm", namespace="serving", is_install=True)
