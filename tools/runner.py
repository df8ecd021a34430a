"""Execute notebooks headless with papermill on the tiny local models (`make run`, the test harness).

Each notebook gets the tiny values for the parameters it declares (model ids -> local folders,
small sizes, 2 steps, fp32, CPU), so a new notebook is picked up without editing this file.
A failing notebook still writes its executed copy; the error names the notebook and the cell. A kernel that
dies (the out-of-memory killer) is reported with the cell it was running and the likely cause, and the run goes on.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import papermill
from nbclient.exceptions import DeadKernelError
from papermill.exceptions import PapermillExecutionError

from helpers import KIT_ROOT

from . import kernel_death
from .tiny import build_all

ROOT = KIT_ROOT
NOTEBOOKS = ROOT / "notebooks"
TINY_DIR = ROOT / ".cache" / "tiny"
RUNS = ROOT / "runs"


# The tiny model that stands in for each real Hub id a notebook may default to.
TINY_STAND_INS = {
    "Qwen/Qwen-Image": "qwen-image",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-safety",
    "madebyollin/sdxl-vae-fp16-fix": "vae-alt",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan-t2v",
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": "wan-i2v",
}


def stand_ins(declared: dict, tiny: dict[str, Path], served: frozenset[str] = frozenset()) -> dict:
    """Every parameter whose default is a known Hub id gets the matching tiny folder, unless a local Hub
    serves that id (`served`): then the notebook keeps its real default and downloads it."""
    chosen = {}
    for name, info in declared.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            continue
        if isinstance(default, str) and default in TINY_STAND_INS and default not in served:
            chosen[name] = str(tiny[TINY_STAND_INS[default]])
    return chosen


def tiny_parameters(output_dir: Path) -> dict:
    """Small, fast values for the parameter names the notebooks share; each takes the ones it declares.

    quantization "none" and force: a real Hub id served by the local Hub is planned at its real size (on this
    machine Qwen-Image in float32 does not fit, and would be quantized), but the stand-in's weights are tiny. The
    plan's refusals and its quantized paths have their own runs (tests/test_plan_notebooks.py,
    tests/test_quantization.py), on the same notebooks.
    """
    return {
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "num_frames": 5,
        "dtype": "float32",
        "device_map": "auto",
        "parallel_loading": True,
        "local_dir": "",
        "output_dir": str(output_dir),
        "install": False,
        "hf_home": "",
        "quantization": "none",
        "force": True,
    }


def declared_parameters(notebook: Path) -> dict:
    return papermill.inspect_notebook(str(notebook))


def headless_parameters(notebook: Path, tiny: dict[str, Path], output_dir: Path,
                        served: frozenset[str] = frozenset()) -> dict:
    """The parameters a headless run injects: tiny stand-ins for Hub ids (except those a local Hub serves),
    then small sizes and steps."""
    return {**stand_ins(declared_parameters(notebook), tiny, served), **tiny_parameters(output_dir)}


def hub_environment(endpoint: str) -> dict[str, str]:
    """Kernel environment for a run against a Hub mirror or local stand-in at `endpoint` (HF_ENDPOINT, online).

    Every proxy variable points at the same endpoint and only 127.0.0.1/localhost bypass it: a stand-in that
    refuses to proxy (tests/localhub.py) makes any attempt to reach another host fail at once, visibly.
    """
    proxy = {name: endpoint for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY")}
    return {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", **proxy,
            "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


@contextmanager
def environment_of_kernels(overrides: dict[str, str] | None):
    """Kernels inherit os.environ when they start: set `overrides` for the run, then restore what was there."""
    saved = {name: os.environ.get(name) for name in overrides or {}}
    os.environ.update(overrides or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class NotebookFailed(RuntimeError):
    """A notebook cell raised; carries where (cell index and id) and the executed copy's path."""

    def __init__(self, notebook: Path, executed: Path, cell: str, error: str):
        self.notebook, self.executed, self.cell, self.error = notebook, executed, cell, error
        super().__init__(f"{notebook.name} failed in {cell}: {error}\nExecuted copy: {executed}")

    def __reduce__(self):  # picklable, so results can come back from worker processes
        return type(self), (self.notebook, self.executed, self.cell, self.error)


class KernelDied(NotebookFailed):
    """The kernel process ended mid-cell (killed by a signal, crashed, exited); `error` says how and what to try."""


@dataclass
class Result:
    notebook: Path
    executed: Path
    seconds: float
    error: NotebookFailed | None = None


def encrypted_kernel_manager():
    """A KernelManager that gives the kernel CurveZMQ keys (our kernelspec declares curve support).

    Without them ipykernel logs "Kernel is running over TCP without encryption" once per notebook;
    with them that warning has no cause. Falls back to the default manager where zmq lacks curve.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    if not zmq.has("curve"):
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return EncryptedKernelManager


def execute(notebook: Path, executed: Path, parameters: dict, environment: dict[str, str] | None = None,
            undeclared: dict | None = None) -> Result:
    """Run one notebook with papermill (cwd = its folder) into `executed`; never raises for a cell error.

    `parameters` the notebook does not declare are dropped (the shared tiny values); `undeclared` ones are
    injected anyway, as papermill does with a misspelt `-p`. `environment` is added to the kernel's
    environment for this run only (e.g. `hub_environment(url)`).
    """
    start = time.perf_counter()
    executed.parent.mkdir(parents=True, exist_ok=True)
    declared = declared_parameters(notebook)
    chosen = {name: value for name, value in parameters.items() if name in declared} | (undeclared or {})
    manager = kernel_death.watching(encrypted_kernel_manager())
    try:
        with environment_of_kernels(environment):
            papermill.execute_notebook(
                str(notebook), str(executed), parameters=chosen, cwd=str(notebook.parent),
                kernel_name="python3", progress_bar=False, log_output=False,
                kernel_manager_class=manager,
            )
        error = None
    except PapermillExecutionError as failure:
        cell = _failing_cell(executed)
        error = NotebookFailed(notebook, executed, cell, f"{failure.ename}: {failure.evalue}")
    except DeadKernelError:
        error = _kernel_died(notebook, executed, declared, manager.exit_status)
    return Result(notebook, executed, time.perf_counter() - start, error)


def _kernel_died(notebook: Path, executed: Path, declared: dict, status: int | None) -> KernelDied:
    """Mark the cell that was running in the executed copy and word the cause (with memory advice if likely)."""
    message = kernel_death.cause(status)
    if kernel_death.likely_out_of_memory(status):
        message += "\n" + kernel_death.advice(declared)
    cell = kernel_death.mark_running_cell(executed, notebook, message)
    return KernelDied(notebook, executed, cell, message)


def _failing_cell(executed: Path) -> str:
    """Name the cell holding the error output (papermill adds a banner cell, so its index is shifted)."""
    import nbformat

    cells = [cell for cell in nbformat.read(executed, as_version=4).cells if cell.cell_type == "code"]
    for number, cell in enumerate(cells, start=1):
        if any(output.output_type == "error" for output in cell.outputs):
            return kernel_death.cell_label(number, cell)
    return "an unknown cell (no error output was saved)"


def new_run_folder(root: Path = RUNS) -> Path:
    """runs/<timestamp>/, with a suffix when that name is taken: runs never overwrite each other."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in range(1000):
        folder = root / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a new run folder under {root}.")


# Run by every headless kernel before the notebook's first cell (IPython startup file in a private IPYTHONDIR).
# diffusers' denoising bar passes `disable=False` explicitly, so TQDM_DISABLE cannot reach it: the switch is
# tqdm's own constructor, patched before any library imports tqdm. The lessons stay free of progress-bar calls.
NO_PROGRESS_BARS = '''"""Headless run (tools/runner.py): every tqdm bar off, whatever `disable=` its caller passes."""
import tqdm.std

_show_bar = tqdm.std.tqdm.__init__


def _no_bar(self, *args, **kwargs):
    kwargs["disable"] = True
    _show_bar(self, *args, **kwargs)


tqdm.std.tqdm.__init__ = _no_bar
'''


def headless_ipython_dir() -> Path:
    """A private IPYTHONDIR (removed at exit) whose startup file switches progress bars off."""
    current = os.environ.get("IPYTHONDIR", "")
    if current and current == os.environ.get("KIT_HEADLESS_IPYTHONDIR") and Path(current).is_dir():
        return Path(current)  # made earlier in this process
    folder = Path(tempfile.mkdtemp(prefix="kit-ipython-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    profile = folder / "profile_default"
    (profile / "startup").mkdir(parents=True)
    (profile / "startup" / "00-no-progress-bars.py").write_text(NO_PROGRESS_BARS)
    return folder


def headless_environment() -> None:
    """What the kernels inherit: no progress bars (a kernel startup hook), no Hub access (the tiny models are local)."""
    os.environ["KIT_QUIET"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["IPYTHONDIR"] = os.environ["KIT_HEADLESS_IPYTHONDIR"] = str(headless_ipython_dir())
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


def report(result: Result, extra: str = "") -> None:
    """One line per notebook, printed as soon as it finishes (flushed: `make run` pipes it)."""
    status = "FAILED" if result.error else "ok"
    print(f"{status:6s} {result.notebook.name:32s} {result.seconds:6.1f} s{extra}  -> {result.executed}", flush=True)
    if result.error:
        print(f"       {result.error}", file=sys.stderr, flush=True)


def run_all(notebooks: list[Path], run_folder: Path, tiny_dir: Path = TINY_DIR, on_result=None,
            hub_endpoint: str | None = None) -> list[Result]:
    """Every notebook on the tiny models; with `hub_endpoint`, their Hub cells talk to that Hub (a mirror)."""
    headless_environment()
    tiny = build_all(tiny_dir)
    environment = hub_environment(hub_endpoint) if hub_endpoint else None
    results = []
    for notebook in notebooks:
        parameters = headless_parameters(notebook, tiny, run_folder / notebook.stem)
        results.append(execute(notebook, run_folder / notebook.name, parameters, environment))
        if on_result:
            on_result(results[-1])
    return results


PEAK_MARKER = "KIT_PEAK_VRAM_GIB="
PEAK_CELL = (
    "import json, torch\n"
    "print('" + PEAK_MARKER + "' + json.dumps({i: round(torch.cuda.max_memory_allocated(i) / 2**30, 2)\n"
    "      for i in range(torch.cuda.device_count())}))"
)


def required_gpus(notebook: Path) -> int:
    """GPUs a notebook needs for a real run (notebook metadata kit.requires_gpus, default 1)."""
    import nbformat

    return int(nbformat.read(notebook, as_version=4).metadata.get("kit", {}).get("requires_gpus", 1))


def run_real(notebooks: list[Path], run_folder: Path, on_result=None) -> list[Result]:
    """Execute notebooks with their own defaults (real Hub models, real sizes) on this machine's GPUs.

    A copy of each notebook gets one extra last cell that prints the peak VRAM per GPU; the executed
    copy, with that figure, is what lands in the run folder.
    """
    import nbformat
    import torch

    results = []
    gpu_count = torch.cuda.device_count()
    for notebook in notebooks:
        needed = required_gpus(notebook)
        if gpu_count < needed:
            print(f"skipped {notebook.name}: needs {needed} CUDA GPU(s), {gpu_count} visible")
            continue
        instrumented = nbformat.read(notebook, as_version=4)
        instrumented.cells.append(nbformat.v4.new_code_cell(PEAK_CELL, metadata={"tags": ["kit-instrumentation"]}))
        copy = run_folder / f".{notebook.name}"
        nbformat.write(instrumented, copy)
        result = execute(copy, run_folder / notebook.name, {"output_dir": str(run_folder / notebook.stem)})
        result.notebook = notebook
        copy.unlink()
        results.append(result)
        if on_result:
            on_result(result)
    return results


def peak_vram(executed: Path) -> str:
    import nbformat

    for cell in reversed(nbformat.read(executed, as_version=4).cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and PEAK_MARKER in output.get("text", ""):
                return output["text"].split(PEAK_MARKER, 1)[1].strip()
    return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.runner", description=__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where run folders are created")
    parser.add_argument("--tiny-dir", type=Path, default=TINY_DIR, help="tiny model cache")
    parser.add_argument("--hub-endpoint", metavar="URL", help="run the Hub cells against this Hub (HF_ENDPOINT, "
                        "e.g. a mirror); without it the kernels are offline and those cells explain why they skip")
    parser.add_argument("--real", action="store_true", help="run with the notebooks' own defaults (real models) "
                        "on CUDA GPUs; needs network or a warm HF cache")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if args.real:
        import torch

        if not torch.cuda.is_available():
            print("make test-gpu: skipped, no CUDA GPU on this machine (the notebooks' real defaults need one).")
            return 0
    run_folder = new_run_folder(args.runs)
    print(f"running {len(notebooks)} notebook(s) into {run_folder}", flush=True)
    if args.real:
        results = run_real(notebooks, run_folder,
                           on_result=lambda r: report(r, f"  peak VRAM GiB {peak_vram(r.executed)}"))
    else:
        results = run_all(notebooks, run_folder, args.tiny_dir, on_result=report, hub_endpoint=args.hub_endpoint)
    from helpers.outputs import write_gallery

    print(f"run folder: {run_folder} (gallery: {write_gallery(run_folder)})")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
