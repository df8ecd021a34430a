import pytest
from packaging.requirements import Requirement

from helpers import install
from helpers.env import Runtime

PINNED = {name: Requirement(spec) for name, spec in {
    "torch": "torch>=2.11,<2.14", "diffusers": "diffusers==0.42.1", "transformers": "transformers==5.23.0",
    "huggingface-hub": "huggingface_hub==2.4.0", "ipykernel": "ipykernel==7.4.0",
}.items()}
CURRENT = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.23.0", "huggingface-hub": "2.4.0",
           "ipykernel": "7.4.0"}
COLAB = Runtime("colab", ci=False)


def test_colab_with_an_older_diffusers_already_imported_restarts_once():
    installed = {**CURRENT, "torch": "2.9.0+cu126", "diffusers": "0.35.2", "ipykernel": "6.17.1"}
    plan = install.plan(COLAB, PINNED, installed, imported={"diffusers", "torch"})
    assert plan.install == ["diffusers==0.42.1"]  # never torch, never the host's ipykernel
    assert plan.restart_for == ["diffusers"]


def test_colab_fresh_installs_without_restart():
    installed = {**CURRENT, "diffusers": "0.35.2", "huggingface-hub": None}
    plan = install.plan(COLAB, PINNED, installed, imported={"torch", "IPython"})
    assert plan.install == ["diffusers==0.42.1", "huggingface_hub==2.4.0"]
    assert not plan.restart_needed


def test_kaggle_is_hosted_too():
    plan = install.plan(Runtime("kaggle", ci=False), PINNED, {**CURRENT, "transformers": "4.57.0"}, set())
    assert plan.install == ["transformers==5.23.0"]


@pytest.mark.parametrize("runtime", [Runtime("jupyter", ci=False), Runtime("python", ci=True)])
def test_local_mismatch_advises_and_installs_nothing(runtime):
    plan = install.plan(runtime, PINNED, {**CURRENT, "ipykernel": "6.0.0"}, {"ipykernel"})
    assert plan.install == [] and not plan.restart_needed
    assert "ipykernel: pinned ==7.4.0, found 6.0.0" in plan.advice and "make install" in plan.advice


def test_everything_pinned_means_nothing_to_do():
    plan = install.plan(COLAB, PINNED, CURRENT, {"diffusers"})
    assert plan.install == [] and not plan.restart_needed


def test_pip_failure_raises_with_pips_own_error():
    with pytest.raises(install.PipInstallError) as error:
        install.pip_install(["--no-index", "kit-package-that-does-not-exist==0.0.0"])
    assert error.value.returncode != 0
    assert "kit-package-that-does-not-exist" in str(error.value)


def test_restart_outside_colab_only_advises(capsys):
    install.restart(Runtime("jupyter", ci=False), "diffusers was imported")
    assert "Restart the kernel before going on: diffusers was imported" in capsys.readouterr().out


def test_colab_restart_says_why_before_the_kill(capsys):
    events = []
    install.restart(COLAB, "diffusers were imported before the upgrade",
                    kill=lambda pid, sig: events.append(("kill", capsys.readouterr().out)))
    assert len(events) == 1
    said = events[0][1]  # what had been printed when the kill came
    assert "Restarting the runtime: diffusers were imported before the upgrade" in said
    assert "run the notebook again from the top" in said


def test_install_false_in_colab_installs_nothing_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(install, "detect_runtime", lambda: COLAB)
    monkeypatch.setattr(install.pins, "installed_version", lambda name: "0.0.1")
    monkeypatch.setattr(install, "pip_install", lambda requirements: pytest.fail("pip ran"))
    plan = install.ensure_pinned(install=False)
    assert plan.install and "Not installing (install=False)" in capsys.readouterr().out
