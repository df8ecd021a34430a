"""The plan cell of the notebooks, run the way a papermill user runs them, on the real default Hub ids.

Offline (HF_HUB_OFFLINE=1) and with an empty (or configs-only) Hub cache: the plan comes from the configs
shipped in helpers/architectures, and no weight file is ever fetched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from helpers import KIT_ROOT, architectures
from tools import runner

NOTEBOOK = KIT_ROOT / "notebooks" / "02_load_and_generate.ipynb"


def papermill(tmp_path: Path, *parameters: str, notebook: Path = NOTEBOOK) -> tuple[subprocess.CompletedProcess, dict]:
    runner.headless_environment()  # the runner's kernel settings (no progress bars), for the papermill CLI too
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "KIT_QUIET": "1"}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "out.ipynb"
    args = [sys.executable, "-m", "papermill", str(notebook), str(out), "--no-progress-bar", "-k", "python3"]
    for pair in zip(parameters[::2], parameters[1::2], strict=True):
        args += ["-p", *pair]
    done = subprocess.run(args, capture_output=True, text=True, cwd=KIT_ROOT, env=env, timeout=300)
    cells = {c.get("id"): c.get("outputs", []) for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"}
    return done, cells


def text(outputs: list) -> str:
    return "".join(o.get("text", "") + "".join(o.get("traceback", [])) for o in outputs)


def skipped(outputs: list) -> bool:
    """A cell after a plan_only stop prints why it did not run, and nothing else."""
    return text(outputs).startswith("skipped: plan_only=True") and text(outputs).count("\n") == 1


def files_over(folder: Path, size: int) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > size] if folder.exists() else []


def test_plan_only_on_colab_t4_prints_the_plan_from_shipped_configs_and_downloads_nothing(tmp_path):
    done, cells = papermill(tmp_path, "hardware", "colab-t4", "plan_only", "True")
    assert done.returncode == 0, done.stderr[-3000:]
    plan = text(cells["load-plan"])
    assert "Load plan for Qwen/Qwen-Image (QwenImagePipeline) on colab-t4" in plan
    assert "transformer" in plan and "text_encoder" in plan and "bfloat16" in plan
    assert not re.search(r"(?<!b)float16", plan.split("verdict")[0])  # never fp16 for Qwen-Image
    assert "plan_only=True: stopping here" in plan
    assert all(skipped(outputs) for cell, outputs in cells.items() if cell in ("imports", "local", "auto-class"))
    assert not files_over(tmp_path / "hf", 0), "plan_only must not download anything"


def test_cpu_and_a_model_bigger_than_ram_stops_before_download_with_alternatives(tmp_path):
    # A Hub cache holding only the configs (what planning online leaves behind): the id passes the
    # offline check, the plan refuses it, and the download cell is never reached.
    snapshot = tmp_path / "hf" / "hub" / "models--Qwen--Qwen-Image" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(architectures.folder("Qwen/Qwen-Image") / "model_index.json", snapshot / "model_index.json")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    done, cells = papermill(tmp_path, "hardware", "cpu")
    assert done.returncode == 1
    error = text(cells["load-plan"])
    assert "PlanDoesNotFitError" in error and "does not fit cpu" in error
    assert "peak RAM" in error and "Alternatives, best first" in error
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in error  # a smaller family that fits
    assert not cells["local"] and not cells["auto-class"]  # never reached
    assert not files_over(tmp_path / "hf", 100_000)
    assert json.loads((snapshot / "model_index.json").read_text())["_class_name"] == "QwenImagePipeline"


def test_plan_only_in_the_multi_gpu_notebook_plans_two_t4s(tmp_path):
    notebook = KIT_ROOT / "notebooks" / "05_multi_gpu_balanced.ipynb"
    done, cells = papermill(tmp_path, "hardware", "kaggle-2xt4", "plan_only", "True", notebook=notebook)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = text(cells["load-plan"])
    assert "on kaggle-2xt4: 2x Tesla T4" in plan and "device_map      'balanced'" in plan
    assert "cuda:0" in plan and "cuda:1" in plan and "plan_only=True: stopping here" in plan
    assert skipped(cells["sizes"]) and skipped(cells["data-parallel"])  # nothing loaded, nothing launched
    assert not files_over(tmp_path / "hf", 0)


PLANNED_LOADS = {"02": ["auto-class", "specific", "dtype-load", "dtype-seed"], "03": ["vae"], "04": ["file"],
                 "05": ["balanced"]}


def test_every_load_of_the_planned_model_takes_the_plans_variant():
    """The plan counts SD's and SDXL's fp16 files in half precision (download, disk, RAM): the literal
    from_pretrained of that model must load the same files, so it passes variant=load_plan.variant."""
    import ast

    for number, cell_ids in PLANNED_LOADS.items():
        notebook = next((KIT_ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        cells = {c.get("id"): c for c in nbformat.read(notebook, 4).cells}
        for cell_id in cell_ids:
            calls = [node for node in ast.walk(ast.parse(cells[cell_id].source)) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"
                     and node.args and ast.unparse(node.args[0]) in ("source", "audited.source")]
            assert calls, f"{number} {cell_id}: no from_pretrained of the planned model"
            for call in calls:  # variant=load_plan.variant, or **load_kwargs (plan_kwargs carries the variant)
                keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
                splats = [value for name, value in keywords.items() if name is None]
                assert keywords.get("variant") == "load_plan.variant" or any(
                    re.fullmatch(r"load_kwargs|\{\*\*load_kwargs, [^*]*\}", value) for value in splats
                ), f"{number} {cell_id}: {ast.unparse(call)[:80]}"
