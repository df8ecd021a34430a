"""helpers.setup's decisions: pins, the hosted install, the quantization backends, restart, the report's reasons.

Core tests: they need only the standard library, packaging and pytest (CI runs them on Python 3.11 and 3.13,
see tools/colab/core_tests.py), so nothing here imports torch, diffusers or huggingface_hub.
"""

import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from helpers import rules, setup
from helpers.env import Runtime
from helpers.errors import PipInstallError

PINNED = {name: Requirement(spec) for name, spec in {
    "torch": "torch>=2.11,<2.14", "diffusers": "diffusers==0.42.1", "transformers": "transformers==5.23.0",
    "huggingface-hub": "huggingface_hub==1.33.0", "ipykernel": "ipykernel==7.4.0",
}.items()}
CURRENT = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0", "huggingface-hub": "1.33.0",
           "ipykernel": "7.4.0"}
COLAB = Runtime("colab", ci=False)
LOCAL = Runtime("jupyter", ci=False)


# ---- pins ----

def test_requirements_pin_the_stack_the_kit_is_tested_on():
    pinned = setup.load_pins()
    expected = {
        "diffusers": "==0.42.1", "transformers": "==5.23.0", "accelerate": "==1.15.0",
        "huggingface-hub": "==1.33.0", "safetensors": "==0.8.0", "papermill": "==2.7.0",
        "nbval": "==0.11.0", "ipywidgets": "==8.1.9",
    }
    assert {name: str(pinned[name].specifier) for name in expected} == expected
    unpinned = [name for name, req in pinned.items() if name != "torch" and not str(req.specifier).startswith("==")]
    assert unpinned == []


@pytest.mark.parametrize("version, admitted", [
    ("2.11.0+cu128", True),  # Colab's CUDA build
    ("2.13.0+cpu", True),  # the CPU build CI installs
    ("2.10.0", False),
    ("2.14.0", False),
])
def test_torch_range_admits_colab_and_cpu_builds(version, admitted):
    assert setup.load_pins()["torch"].specifier.contains(version) is admitted


def test_load_pins_skips_comments_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n-r other.txt\nfoo==1.0  # trailing comment\n\nBar_Baz>=2,<3\n")
    assert {name: str(req.specifier) for name, req in setup.load_pins(path).items()} == {
        "foo": "==1.0", "bar-baz": "<3,>=2",
    }


def test_missing_pins_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        setup.load_pins(tmp_path / "nope.txt")


def test_find_mismatches_names_package_and_both_versions():
    pinned = {"diffusers": Requirement("diffusers==0.42.1"), "safetensors": Requirement("safetensors==0.8.0")}
    found = setup.find_mismatches(pinned, {"diffusers": "0.35.2", "safetensors": "0.8.0"})
    assert [str(m) for m in found] == ["diffusers: pinned ==0.42.1, found 0.35.2"]
    missing = setup.find_mismatches(pinned, {"diffusers": "0.42.1"})
    assert [str(m) for m in missing] == ["safetensors: pinned ==0.8.0, found not installed"]


def test_backends_table_agrees_with_the_requirements_files():
    pinned = {**setup.load_pins(), **setup.load_pins(setup.REQUIREMENTS.with_name("requirements-gpu.txt"))}
    for name, spec in rules.BACKENDS.items():
        assert str(pinned[spec["package"]].specifier) == f"=={spec['pin']}", name
        assert setup.Version(spec["pin"]) >= setup.Version(spec["min"]), name


# ---- the hosted install decision ----

def test_colab_with_an_older_diffusers_already_imported_restarts_once():
    installed = {**CURRENT, "torch": "2.11.0+cu128", "diffusers": "0.39.0", "ipykernel": "6.17.1"}
    plan = setup.plan(COLAB, PINNED, installed, imported={"diffusers", "torch"})
    assert plan.install == ["diffusers==0.42.1"]  # never torch, never the host's ipykernel
    assert plan.restart_for == ["diffusers"]
    assert "diffusers were imported before the upgrade" in plan.reason


def test_colab_fresh_installs_without_restart():
    installed = {**CURRENT, "diffusers": "0.39.0", "huggingface-hub": None}
    plan = setup.plan(COLAB, PINNED, installed, imported={"torch", "IPython"})
    assert plan.install == ["diffusers==0.42.1", "huggingface_hub==1.33.0"]
    assert not plan.restart_needed


def test_kaggle_is_hosted_too():
    plan = setup.plan(Runtime("kaggle", ci=False), PINNED, {**CURRENT, "transformers": "4.57.0"}, set())
    assert plan.install == ["transformers==5.23.0"]


@pytest.mark.parametrize("runtime", [LOCAL, Runtime("python", ci=True)])
def test_local_mismatch_advises_and_installs_nothing(runtime):
    plan = setup.plan(runtime, PINNED, {**CURRENT, "ipykernel": "6.0.0"}, {"ipykernel"})
    assert plan.install == [] and not plan.restart_needed
    assert "ipykernel: pinned ==7.4.0, found 6.0.0" in plan.advice and "make install" in plan.advice


def test_everything_pinned_means_nothing_to_do():
    plan = setup.plan(COLAB, PINNED, CURRENT, {"diffusers"})
    assert plan.install == [] and not plan.restart_needed


# ---- quantization backends: chosen from the parameters, installed before diffusers is imported ----

@pytest.mark.parametrize("parameters, gpu, expected", [
    ({"quantization": "int8"}, True, ["bitsandbytes"]),
    ({"quantization": "int8"}, False, ["torchao"]),
    ({"quantization": "int8", "device_map": "cpu"}, True, ["torchao"]),
    ({"quantization": "int8", "hardware": "cpu"}, True, ["torchao"]),
    ({"quantization": "int4"}, True, ["quanto"]),
    ({"quantization": "nf4"}, True, ["bitsandbytes"]),
    ({"quantization": "nf4"}, False, []),  # refused later with its CPU alternative; never installed on CPU
    ({"quantization": "gguf:model-Q4_K_M.gguf"}, False, ["gguf"]),
    ({"quantization": "auto"}, True, ["bitsandbytes"]),  # the planner's GPU choices: int8 and nf4
    ({"quantization": "auto"}, False, ["torchao", "quanto"]),  # on CPU: int8 (torchao) and int4 (quanto)
    ({"quantization": "auto", "plan_only": True}, True, []),  # loads nothing
    ({"quantization": "none"}, True, []),
    ({}, True, []),  # a notebook without the parameter
])
def test_backends_needed_follow_the_parameters_and_the_device(parameters, gpu, expected):
    assert setup.backends_needed(parameters, gpu) == expected


def test_a_missing_backend_is_installed_with_the_pins_and_no_restart_when_nothing_is_imported():
    installed = {**CURRENT, "diffusers": "0.39.0", "bitsandbytes": None}
    plan = setup.plan(COLAB, PINNED, installed, {"torch"}, backends=["bitsandbytes"])
    assert plan.install == ["diffusers==0.42.1", "bitsandbytes==0.50.2"] and not plan.restart_needed


def test_a_too_old_backend_is_named_with_found_and_required_versions():
    plan = setup.plan(COLAB, PINNED, {**CURRENT, "torchao": "0.10.0"}, {"torch"}, backends=["torchao"])
    assert plan.install == ["torchao==0.18.0"]
    assert "torchao: found 0.10.0, too old (the pinned diffusers and transformers need >= 0.15.0" in plan.advice


def test_a_newer_backend_than_the_minimum_is_kept():
    plan = setup.plan(COLAB, PINNED, {**CURRENT, "optimum-quanto": "0.2.6"}, set(), backends=["quanto"])
    assert plan.install == []


def test_a_backend_installed_after_diffusers_was_imported_restarts_once_with_the_reason():
    plan = setup.plan(COLAB, PINNED, {**CURRENT, "optimum-quanto": None}, {"torch", "diffusers"}, backends=["quanto"])
    assert plan.install == ["optimum-quanto==0.2.7"]
    assert plan.restart_for == ["diffusers"]
    assert "look for quantization backends (optimum-quanto) only when imported" in plan.reason


def test_locally_a_missing_backend_is_advised_not_installed():
    plan = setup.plan(LOCAL, {}, {"bitsandbytes": None}, set(), backends=["bitsandbytes"])
    assert plan.install == [] and "bitsandbytes==0.50.2" in plan.advice


def test_gpu_presence_is_asked_of_nvidia_smi_without_torch(monkeypatch):
    monkeypatch.setattr(setup.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    listed = subprocess.CompletedProcess([], 0, stdout="GPU 0: Tesla T4 (UUID: GPU-1234)\n")
    assert setup.gpu_present(run=lambda *a, **k: listed) is True
    failed = subprocess.CompletedProcess([], 9, stdout="NVIDIA-SMI has failed: no devices were found\n")
    assert setup.gpu_present(run=lambda *a, **k: failed) is False
    monkeypatch.setattr(setup.shutil, "which", lambda name: None)
    assert setup.gpu_present(run=lambda *a, **k: pytest.fail("ran without nvidia-smi")) is False


# ---- acting ----

def test_pip_failure_raises_with_pips_own_error():
    with pytest.raises(PipInstallError) as error:
        setup.pip_install(["--no-index", "kit-package-that-does-not-exist==0.0.0"], echo=lambda line: None)
    assert error.value.returncode != 0
    assert "kit-package-that-does-not-exist" in str(error.value) and "Fix:" in str(error.value)


def test_every_conflict_line_pip_prints_reaches_the_user(tmp_path, monkeypatch):
    said = (
        "Collecting huggingface_hub==2.4.0\n"
        "Requirement already satisfied: httpx in /usr/lib/python3/dist-packages\n"
        "ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. "
        "This behaviour is the source of the following dependency conflicts.\n"
        "gradio 6.24.0 requires huggingface-hub<2.0,>=0.33.5, but you have huggingface-hub 2.4.0 which is "
        "incompatible.\n"
        "gradio-client 2.6.0 requires huggingface-hub<2.0,>=0.19.3, but you have huggingface-hub 2.4.0 which is "
        "incompatible.\n"
        "Successfully installed huggingface_hub-2.4.0\n"
    )
    fake = tmp_path / "pip.py"
    fake.write_text(f"import sys\nsys.stdout.write({said!r})\n")
    real_popen = subprocess.Popen
    monkeypatch.setattr(setup.subprocess, "Popen", lambda argv, **kw: real_popen([sys.executable, str(fake)], **kw))
    shown = []
    conflicts = setup.pip_install(["huggingface_hub==2.4.0"], echo=shown.append)
    assert [line for line in said.splitlines() if "gradio" in line] == conflicts[1:]
    assert all(f"  pip: {line}" in shown for line in conflicts)
    assert not any("Requirement already satisfied" in line for line in shown)


def test_restart_outside_colab_only_advises(capsys):
    setup.restart(LOCAL, "diffusers was imported")
    assert "Restart the kernel before going on: diffusers was imported" in capsys.readouterr().out


def test_colab_restart_says_why_before_the_kill(capsys):
    events = []
    setup.restart(COLAB, "diffusers were imported before the upgrade",
                  kill=lambda pid, sig: events.append(("kill", capsys.readouterr().out)))
    assert len(events) == 1
    said = events[0][1]  # what had been printed when the kill came
    assert "Restarting the runtime: diffusers were imported before the upgrade" in said
    assert "run the notebook again from the top" in said


def test_install_false_in_colab_installs_nothing_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(setup.env, "detect_runtime", lambda: COLAB)
    monkeypatch.setattr(setup, "installed_version", lambda name: "0.0.1")
    monkeypatch.setattr(setup, "pip_install", lambda requirements: pytest.fail("pip ran"))
    plan = setup.ensure_pinned(install=False, backends=["torchao"])
    assert "torchao==0.18.0" in plan.install and "Not installing (install=False)" in capsys.readouterr().out


def test_importing_setup_imports_no_pinned_package_or_backend():
    code = ("import sys, helpers.setup; heavy = ('torch', 'diffusers', 'transformers', 'huggingface_hub', "
            "'accelerate', 'torchao', 'bitsandbytes', 'optimum', 'gguf'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=setup.KIT_ROOT).stdout
    assert out.strip() == "[]"


# ---- the report: every pin a hosted install leaves is a decision with its reason ----

def test_every_pin_outside_the_hosted_install_has_a_stated_reason():
    pinned = setup.load_pins()
    unexplained = [name for name in pinned if name not in setup.HOSTED_INSTALL and name not in setup.LEFT_AS_FOUND]
    assert unexplained == []
    assert "CUDA build" in setup.LEFT_AS_FOUND["torch"]


def test_report_in_colab_lists_each_kept_pin_with_its_reason():
    mismatch = setup.Mismatch("ipykernel", "==7.4.0", "6.17.1")
    report = setup.Report(COLAB, "3.13.15", {}, [], [(mismatch, setup.LEFT_AS_FOUND["ipykernel"])], "cuda",
                          "float16", [], 12.7, False, "/root/.cache/huggingface/hub", False)
    text = str(report)
    assert "pins           installed by the kit match" in text
    assert "kept as found  ipykernel: pinned ==7.4.0, found 6.17.1: the running notebook server's" in text
    assert "all match" not in text
