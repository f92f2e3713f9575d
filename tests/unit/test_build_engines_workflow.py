"""Lint .github/workflows/build-engines.yml: it parses, runs in the pinned NGC TensorRT-LLM image on a GPU runner,
and has every step the pipeline needs, in order."""

from pathlib import Path

import pytest
import yaml

from build_engines.trtllm import NGC_IMAGE, TRTLLM_VERSION

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "build-engines.yml"


@pytest.fixture(scope="module")
def job():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["name"] == "build-engines"
    assert "workflow_dispatch" in workflow[True]  # YAML 1.1 reads the key `on` as True
    (job,) = workflow["jobs"].values()
    return {**job, "env": workflow.get("env", {})}


def test_runs_in_the_pinned_container_on_a_gpu_runner(job):
    assert job["container"]["image"] == NGC_IMAGE
    assert "--gpus all" in job["container"]["options"]
    assert "gpu" in job["runs-on"]
    assert job["env"]["TRTLLM_REF"] == f"v{TRTLLM_VERSION}"


def _index(steps, predicate, what):
    found = [i for i, step in enumerate(steps) if predicate(step)]
    assert found, f"no step that {what}"
    return found[0]


def test_has_the_required_steps_in_order(job):
    steps = job["steps"]
    run = lambda i: steps[i].get("run", "")  # noqa: E731
    examples = _index(
        steps,
        lambda s: s.get("with", {}).get("repository") == "NVIDIA/TensorRT-LLM",
        "checks out the TensorRT-LLM examples",
    )
    build = _index(steps, lambda s: "llmserve build --engine trtllm" in s.get("run", ""), "builds the engines")
    assert "--trtllm-examples" in run(build) and "--dry-run" not in run(build)
    assert "model_repository" in run(build)  # the build renders the repository, and the step checks it
    serve = _index(steps, lambda s: "llmserve serve --model-repository" in s.get("run", ""), "starts Triton")
    assert "/ready" in run(serve)
    smoke = _index(steps, lambda s: "from openai import OpenAI" in s.get("run", ""), "smoke-tests with the SDK")
    assert "stream=True" in run(smoke) and "assert" in run(smoke)
    upload = _index(steps, lambda s: s.get("uses", "").startswith("actions/upload-artifact@"), "uploads artifacts")
    assert "engines" in steps[upload]["with"]["path"] and "manifest.json" in steps[upload]["with"]["path"]
    assert steps[upload].get("if") == "always()"
    assert examples < build < serve < smoke < upload
