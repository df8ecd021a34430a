"""Colab first run, in the simulation of tools/colab_sim (its docstring says what it does and doesn't reproduce).

The decision to install and to restart is the kit's real code (helpers.setup in a kernel that imported
google.colab at start); only pip and git are stand-ins that record what they were asked to do.
"""

from __future__ import annotations

import json

import pytest

from helpers import setup
from tools import colab_sim, runner

NOTEBOOKS = sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb"))
RESTART_REASON = "Restarting the runtime: diffusers, huggingface-hub were imported before the upgrade"


def expected_install() -> list[str]:
    """The pins of every package the simulated old stack holds at another version, in pins order."""
    old = {setup.canonicalize_name(name) for name in colab_sim.OLD_STACK}
    return [str(req) for name, req in setup.load_pins().items() if name in old and name in setup.HOSTED_INSTALL]


def hub_defaults(notebook) -> dict[str, str]:
    """The notebook's parameters whose default is a Hub id the harness knows, as {name: hub id}."""
    chosen = runner.stand_ins(runner.declared_parameters(notebook), {v: v for v in runner.TINY_STAND_INS.values()})
    return {name: hub for name, tiny in chosen.items() for hub, t in runner.TINY_STAND_INS.items() if t == tiny}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_fresh_runtime_gets_past_setup_without_restart(notebook, tmp_path):
    sim = colab_sim.build(tmp_path / "sim")
    for hub_id in hub_defaults(notebook).values():
        sim.cache_model(hub_id)  # its model_index.json only: enough for the parameter check
    last = "cache" if notebook.name.startswith("01") else "setup"
    run = colab_sim.execute(sim, notebook, tmp_path / notebook.name, {}, upto=last)  # the real Hub-id defaults

    assert run.error == "", run.text
    assert "Restarting the runtime" not in run.text and "Restart the kernel" not in run.text
    assert sim.pip_calls() and sim.pip_calls()[0][-len(expected_install()):] == expected_install()
    assert not any("torch" in arg for call in sim.pip_calls() for arg in call)  # Colab's torch is left alone
    assert set(sim.old_versions()) == {"ipywidgets"}  # the old diffusion stack was replaced
    assert [call[0] for call in sim.git_calls()] == ["clone"]  # the kit came from the (fake) clone


def test_old_diffusers_imported_first_restarts_once_with_its_reason_then_02_runs(tmp_path, tiny):
    sim = colab_sim.build(tmp_path / "sim")
    sim.cache_model("Qwen/Qwen-Image", tiny["qwen-image"])  # the Hub id's files are the tiny model's
    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    small = {name: value for name, value in runner.tiny_parameters(tmp_path / "out").items()
             if name in runner.declared_parameters(notebook)}

    first = colab_sim.execute(sim, notebook, tmp_path / "first.ipynb", small, before="import diffusers")
    assert first.error.startswith("DeadKernelError"), first.error  # the kit killed the kernel once
    assert RESTART_REASON in first.text  # ... and its reason is in the saved notebook
    assert len(sim.pip_calls()) == 1

    second = colab_sim.execute(sim, notebook, tmp_path / "second.ipynb", small)  # the user runs it again
    assert second.error == "", second.text
    assert "All pinned packages are installed" in second.text and len(sim.pip_calls()) == 1
    assert list((tmp_path / "out").glob("*.png")), "02 saved no image"


def test_local_folder_runs_02_top_to_bottom_on_a_fresh_runtime(tmp_path, tiny):
    sim = colab_sim.build(tmp_path / "sim")
    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    parameters = runner.headless_parameters(notebook, tiny, tmp_path / "out")
    run = colab_sim.execute(sim, notebook, tmp_path / "02.ipynb", parameters)
    assert run.error == "", run.text
    assert "Restarting" not in run.text and len(sim.pip_calls()) == 1


def test_simulation_reports_the_old_stack_until_pip_replaces_it(tmp_path):
    sim = colab_sim.build(tmp_path / "sim")
    assert sim.old_versions() == {name: version for name, (version, _) in colab_sim.OLD_STACK.items()}
    spec = json.loads((sim.root / "jupyter" / "kernels" / colab_sim.KERNEL_NAME / "kernel.json").read_text())
    assert "--IPKernelApp.exec_lines=import google.colab" in spec["argv"]


def test_a_tag_missing_on_github_stops_the_setup_cell_with_gits_reason_and_the_fix(tmp_path):
    sim = colab_sim.build(tmp_path / "sim", environment={"SIM_GIT_MISSING_TAG": "1"})
    notebook = runner.NOTEBOOKS / "01_setup.ipynb"
    run = colab_sim.execute(sim, notebook, tmp_path / "01.ipynb", {}, upto="setup")
    assert "RuntimeError: Could not fetch the kit's tag v0.1.0:" in run.text, run.text
    assert "fatal: Remote branch v0.1.0 not found in upstream origin" in run.text
    assert "Fix: README 'Releases'." in run.text and "CalledProcessError" not in run.text
    assert sim.pip_calls() == []  # nothing was installed
