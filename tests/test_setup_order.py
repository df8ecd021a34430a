"""The setup cell imports none of the pinned packages before `ensure_pinned` runs (issue 11).

Each case runs the notebook's own parameters and setup cells in a fresh interpreter. A recorder stands in
front of the real `ensure_pinned`: it notes which pinned packages are in `sys.modules` at that moment,
then stops the cell (what follows the install is not under test here; the Colab simulation runs it).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import KIT_ROOT
from tools import runner

NOTEBOOKS = sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb"))
PINNED = ("diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors", "tokenizers")

PROBE = r"""
import json, sys
import helpers.setup
seen = {}
class Stop(Exception):
    pass
def recorder(*args, **kwargs):
    seen["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in PINNED)
    raise Stop
helpers.setup.ensure_pinned = recorder
namespace = {"__name__": "__main__"}
try:
    for source in CELLS:
        exec(compile(source, "<cell>", "exec"), namespace)
except Stop:
    pass
print("RESULT=" + json.dumps(seen))
"""


def setup_cells(notebook: Path, overrides: dict) -> list[str]:
    """The parameters cell (with overrides appended, as papermill injects them), then cells up to the install."""
    cells = [cell for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"]
    chosen = []
    for cell in cells:
        source = cell.source
        if "parameters" in cell.metadata.get("tags", []):
            source += "\n" + "\n".join(f"{name} = {value!r}" for name, value in overrides.items())
        chosen.append(source)
        if "ensure_pinned(" in source or "prepare(" in source:
            return chosen
    raise AssertionError(f"{notebook.name}: no cell calls ensure_pinned or prepare")


def imported_at_install(notebook: Path, overrides: dict) -> list[str]:
    code = f"PINNED = {PINNED!r}\nCELLS = {json.dumps(setup_cells(notebook, overrides))}\n" + PROBE
    # The probe imports helpers from this checkout, as the cell would (cwd notebooks/, its parent on sys.path).
    result = subprocess.run([sys.executable, "-c", code], cwd=notebook.parent, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                              "PYTHONPATH": str(KIT_ROOT)})
    assert "RESULT=" in result.stdout, result.stdout + result.stderr
    seen = json.loads(result.stdout.split("RESULT=", 1)[1])
    assert "imported" in seen, f"{notebook.name}: ensure_pinned was never called\n{result.stderr}"
    return seen["imported"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_hub_id_defaults_import_no_pinned_package_before_install(notebook):
    # The notebook's own defaults: real Hub ids (Qwen/Qwen-Image, SDXL, SD 1.5 ...).
    assert imported_at_install(notebook, {}) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_local_folders_import_no_pinned_package_before_install(notebook, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    index = {"_class_name": "StableDiffusionPipeline",
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]}
    (folder / "model_index.json").write_text(json.dumps(index))  # passes the folder check (and safety_model_id's)
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "config.json").write_text("{}")
    (folder / "safety_checker" / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")  # no tensors
    (folder / "config.json").write_text("{}")  # and serves as a model folder (vae_id)
    declared = runner.declared_parameters(notebook)
    local = {name: str(folder) for name, info in declared.items()
             if name in ("model_id", "vae_id", "safety_model_id", "components_repo")}
    if notebook.name.startswith(("02", "03", "04", "05")):
        assert local, f"{notebook.name} declares no model parameter"
    assert imported_at_install(notebook, local) == []


def test_the_probe_sees_an_import_before_install(tmp_path):
    """The probe can fail: a cell that imports huggingface_hub before the setup is caught."""
    notebook = tmp_path / "early.ipynb"
    source = nbformat.read(NOTEBOOKS[1], as_version=4)
    source.cells.insert(0, nbformat.v4.new_code_cell("import huggingface_hub"))
    nbformat.write(source, notebook)
    assert "huggingface_hub" in imported_at_install(notebook, {})


def test_another_versions_helpers_already_imported_stops_with_the_fix(tmp_path):
    """A kit of another version already imported in the runtime: the setup cell stops with the fix.

    The stale kit is this kit's own `helpers/__init__.py` at another version (0.1.0, the first release, already
    has `require`), as a previous notebook's clone would leave it in /content."""
    stale = tmp_path / "diffusers-notebook-kit"
    (stale / "helpers").mkdir(parents=True)
    init = (KIT_ROOT / "helpers" / "__init__.py").read_text()
    (stale / "helpers" / "__init__.py").write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "0.0.9"', init))
    cells = setup_cells(NOTEBOOKS[1], {})
    code = (f"import sys\nsys.path.insert(0, {str(stale)!r})\nimport helpers\nnamespace = {{}}\n"
            f"for source in {json.dumps(cells)}:\n    exec(source, namespace)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=NOTEBOOKS[1].parent, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "KIT_CLONE_ROOT": str(tmp_path / "content")})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: This notebook is kit ") and "helpers 0.0.9" in last
    assert str(stale / "helpers") in last and "Runtime > Restart session" in last and "git checkout v" in last


def test_a_kit_error_shows_as_one_line_in_the_notebook(tiny, tmp_path):
    """The kit's message, not a traceback through helpers' internals (issue 11: ~60 lines offline)."""
    notebook = runner.NOTEBOOKS / "05_multi_gpu_balanced.ipynb"
    parameters = {**runner.headless_parameters(notebook, tiny, tmp_path / "out"), "num_processes": 0}
    result = runner.execute(notebook, tmp_path / "05.ipynb", parameters)
    assert result.error is not None
    errors = [output for cell in nbformat.read(result.executed, as_version=4).cells
              for output in cell.get("outputs", []) if output.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "InvalidParameterError"
    assert errors[0].traceback == [f"InvalidParameterError: {errors[0].evalue}"]
    assert "num_processes=0 is not valid" in errors[0].evalue
