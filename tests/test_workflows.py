"""The GitHub workflows parse, run the README's commands, and keep the GPU runner away from pull requests."""

import yaml

from helpers import KIT_ROOT

WORKFLOWS = KIT_ROOT / ".github" / "workflows"


def load(name):
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def commands(job):
    return [step["run"] for step in job["steps"] if "run" in step]


def test_cpu_ci_runs_the_readme_commands_on_push_and_pull_request():
    ci = load("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    job = ci["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    assert commands(job) == ["make test", "make test-browser"]
    assert job["env"]["TORCH_INDEX"].endswith("/whl/cpu")


def test_gpu_workflow_is_nightly_or_manual_on_the_gpu_runner():
    gpu = load("gpu.yml")
    assert set(gpu["on"]) == {"schedule", "workflow_dispatch"}
    assert not {"pull_request", "pull_request_target"} & set(gpu["on"])
    job = gpu["jobs"]["notebooks"]
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert job["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "make test-gpu" in commands(job)
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/cache") for u in uses)
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    cache = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"].endswith("hf-home/hub") and job["env"]["HF_HOME"].endswith("hf-home")
