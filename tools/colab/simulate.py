"""`make test-colab`: every notebook on a fresh copy of Colab's published package set, with the real pip.

    python -m tools.colab.simulate --venv .cache/colab-venv --python python3.13 [--only 01 restart ...]
                                   [--write bench/COLAB.md]

1. A "Colab minus the GPU" venv from the vendored freeze (tools/colab/runtime.py), built once and kept; its
   `pip check` is the "before".
2. A local Hub (tests/localhub.py) on 127.0.0.1 serves the tiny models under the notebooks' default ids.
3. Each case gets a fresh copy of that venv (hard links: seconds, no disk) as the kernel's Python, with the
   google.colab stub and the fake git clone of tools/colab_sim, and runs the notebook with papermill. The kit's
   setup cell installs from PyPI for real. Checked: no restart, no new `pip check` line, every cell ran, and no
   backend import noise (torchao/quanto/bitsandbytes warnings, torch `_pytree` deprecations) in any output.
4. Two more cases: int8 (torchao) and int4 (quanto) loaded in the same kernel after one setup cell (`int8+int4`);
   and the user who imported diffusers before the setup cell (`restart`): one restart with its reason, then the
   rerun passes.

Prints a table (case, install seconds, restart, pip check before/after, cells run, noise); `--write` also writes
it as markdown. Exits 1 when a check fails.
Not part of CI (.ci/run): it downloads the stack from PyPI and takes minutes per notebook.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers import setup
from tools import colab_sim, runner
from tools.colab import runtime

ROOT = Path(__file__).resolve().parents[2]
QUANTIZED_CELLS = '''import torch
from diffusers import DiffusionPipeline
from helpers import quantization

for name in ("int8", "int4"):  # torchao, then quanto, in this one kernel
    config = quantization.pipeline_config(name, ["unet"], device="cpu", dtype=torch.float32)
    pipe = DiffusionPipeline.from_pretrained(model_id, dtype=torch.float32, quantization_config=config)
    image = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="pil").images[0]
    print(f"{name} ok: {type(pipe.unet.down_blocks[0].resnets[0].conv1).__name__}, image {image.size}")
'''


# Backend import noise: a line naming a quantization backend or torch's _pytree together with a warning word.
NOISE_SOURCE = re.compile(r"torchao|optimum[./]quanto|\bquanto\b|bitsandbytes|_pytree", re.I)
NOISE_WORD = re.compile(r"warn|deprecat|failed to load|skipping import|could not load|unable to import", re.I)
# Not import noise: the deprecation diffusers' own quantizer raises when the plan uses that backend (quanto for int4).
USED_BACKEND = re.compile(r"/diffusers/quantizers/\S+\.py:\d+: FutureWarning")


@dataclass
class Outcome:
    case: str
    install_s: float
    restart: bool
    before: list[str]
    after: list[str]
    cells: str
    problems: list[str]
    notebook: str = ""
    noise: list[str] = field(default_factory=list)


def noise_lines(text: str) -> list[str]:
    """The output lines that are a backend's (or torch _pytree's) import warning, each once, in order."""
    found = [line.strip() for line in text.splitlines()
             if NOISE_SOURCE.search(line) and NOISE_WORD.search(line) and not USED_BACKEND.search(line)]
    return list(dict.fromkeys(found))


def table(outcomes: list[Outcome]) -> str:
    """The markdown table of `outcomes` (one row per case)."""
    rows = ["| case | notebook | install s | restart | pip check before / after | cells run | noise | result |",
            "|---|---|---:|---|---|---|---|---|"]
    for o in outcomes:
        result = "ok" if not o.problems else "; ".join(o.problems).replace("|", "\\|")
        rows.append(f"| {o.case} | {o.notebook} | {o.install_s:.1f} | {'yes' if o.restart else 'no'} | "
                    f"{len(o.before)} / {len(o.after)} lines | {o.cells} | {len(o.noise) or 'none'} | {result} |")
    return "\n".join(rows) + "\n"


def pip_check(python: Path) -> list[str]:
    result = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    return [] if result.returncode == 0 else [line for line in result.stdout.splitlines() if line.strip()]


def fresh_copy(base: Path, into: Path) -> Path:
    subprocess.run(["cp", "-al", str(base), str(into)], check=True)
    return into / "bin" / "python"


def cells_run(executed: Path) -> tuple[int, int]:
    if not executed.is_file():
        return 0, 0
    code = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    return sum(c.get("execution_count") is not None for c in code), len(code)


def setup_seconds(executed: Path) -> float:
    if not executed.is_file():
        return 0.0
    for cell in nbformat.read(executed, as_version=4).cells:
        if cell.get("id") == "setup":
            return float(cell.metadata.get("papermill", {}).get("duration") or 0.0)
    return 0.0


def quantized_notebook(into: Path) -> Path:
    """The parameters and setup cells of notebook 02 (quantization "auto": on CPU both backends), then int8/int4."""
    source = nbformat.read(runner.NOTEBOOKS / "02_load_and_generate.ipynb", as_version=4)
    parameters = nbformat.v4.new_code_cell('model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # Hub id\n'
                                           'quantization: str = "auto"  # on CPU: torchao int8 and quanto int4\n'
                                           'parallel_loading: bool = False  # as notebook 02',
                                           metadata={"tags": ["parameters"]})
    setup = next(c for c in source.cells if c.get("id") == "setup")
    notebook = nbformat.v4.new_notebook(cells=[parameters, setup, nbformat.v4.new_code_cell(QUANTIZED_CELLS)],
                                        metadata=source.metadata)
    path = into / "quantized.ipynb"
    nbformat.write(notebook, path)
    return path


def run_case(case: str, notebook: Path, base: Path, work: Path, environment: dict, parameters: dict,
             before_cell: str = "", rerun: bool = False) -> Outcome:
    folder = work / case
    folder.mkdir()
    python = fresh_copy(base, folder / "venv")
    before = pip_check(python)
    sim = colab_sim.build(folder / "sim", python=str(python), real_packages=True, environment=environment)
    first = colab_sim.execute(sim, notebook, folder / f"{notebook.stem}.ipynb", parameters, before=before_cell,
                              encrypted=False)
    install_s = setup_seconds(first.executed)
    restarted = "Restarting the runtime" in first.text or first.error.startswith("DeadKernelError")
    problems = []
    final = first
    if rerun:
        if not restarted:
            problems.append("expected one restart with its reason; none came")
        elif "were imported before the upgrade" not in first.text:
            problems.append("the restart did not say why")
        final = colab_sim.execute(sim, notebook, folder / f"{notebook.stem}-rerun.ipynb", parameters, encrypted=False)
        if "Restarting the runtime" in final.text:
            problems.append("the rerun restarted again")
    elif restarted:
        problems.append("restarted")
    if final.error:
        problems.append(final.error.strip().splitlines()[-1][:300])
        print(final.text[-1500:], flush=True)
    after = pip_check(python)
    new = [line for line in after if line not in before]
    if new:
        problems.append(f"new pip check lines: {new}")
    ran, total = cells_run(final.executed)
    if ran != total:
        problems.append(f"{ran} of {total} cells ran")
    noise = noise_lines(first.text + final.text)
    if noise:
        problems.append(f"backend import noise: {noise[:3]}")
    if case == "int8+int4" and not ("int8 ok" in final.text and "int4 ok" in final.text):
        problems.append("int8 and int4 did not both load")
    return Outcome(case, install_s, restarted, before, after, f"{ran}/{total}", problems, notebook.name, noise)


def local_hub(tiny: dict):
    sys.path.insert(0, str(ROOT / "tests"))
    from localhub import LocalHub

    from helpers.community import COMMUNITY, MIRROR

    hub = LocalHub()
    for repo_id, name in runner.TINY_STAND_INS.items():
        hub.add_folder(repo_id, tiny[name], message="tiny stand-in")
    # 04's community pipeline by name: the kit's prompt weighting under LPW's name, at the pinned release (as in
    # tests/conftest.py); the name is resolved through the mirror dataset.
    weighting = (COMMUNITY / "kit_prompt_weighting.py").read_bytes()
    release = "v" + str(setup.load_pins()["diffusers"].specifier).removeprefix("==")
    hub.add_files(MIRROR, {f"{release}/lpw_stable_diffusion.py": weighting, "main/lpw_stable_diffusion.py": weighting},
                  repo_type="dataset")
    hub.start()
    return hub


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".cache" / "colab-venv")
    parser.add_argument("--python", required=True, help="a Python 3.13 interpreter (Colab's minor version)")
    parser.add_argument("--wheels", default="", help="a folder of already downloaded wheels (torch) for pip")
    parser.add_argument("--only", nargs="*", default=None, help="case prefixes to run (01, 02, int8, restart)")
    parser.add_argument("--write", type=Path, default=None, help="also write the table as markdown (bench/COLAB.md)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PIP_CACHE_DIR", str(ROOT / ".cache" / "pip"))  # kept: the first build downloads ~3 GB
    if not (args.venv / "bin" / "python").exists():
        print(f"== building {args.venv} from tools/colab/colab-packages.txt (torch is a ~3 GB download)", flush=True)
        runtime.build_venv(args.venv, args.python, args.wheels)
    from tools.tiny import build_all

    tiny = build_all(ROOT / ".cache" / "tiny")
    hub = local_hub(tiny)
    environment = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    work = Path(tempfile.mkdtemp(prefix="kit-colab-"))
    outcomes = []
    try:
        cases = [(nb.stem[:2], nb, {}, "", False) for nb in sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb"))]
        cases += [("int8+int4", quantized_notebook(work), {"quantization": "auto"}, "", False),
                  ("restart", runner.NOTEBOOKS / "02_load_and_generate.ipynb", {}, "import diffusers", True)]
        for case, notebook, extra, before_cell, rerun in cases:
            if args.only is not None and not any(case.startswith(p) for p in args.only):
                continue
            served = frozenset(runner.TINY_STAND_INS)
            declared = runner.declared_parameters(notebook)
            parameters = {name: value for name, value in {
                **runner.headless_parameters(notebook, tiny, work / case / "out", served), **extra}.items()
                if name in declared}
            print(f"== {case}: {notebook.name}", flush=True)
            outcomes.append(run_case(case, notebook, args.venv, work, environment, parameters, before_cell, rerun))
            print(f"   {outcomes[-1].problems or 'ok'}", flush=True)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(outcomes))
    if args.write:
        version = subprocess.run([str(args.venv / "bin" / "python"), "--version"], capture_output=True, text=True)
        args.write.write_text(
            "# make test-colab\n\nEvery notebook's setup cell, then the notebook, on a fresh copy of a venv of Colab's "
            "published package set (tools/colab/colab-packages.txt, see tools/colab/SOURCE), CPU only, local Hub "
            f"with tiny models. Written by `python -m tools.colab.simulate --write {args.write}` on "
            f"{version.stdout.strip()}, {platform.machine()}. The `restart` case must restart once, with its reason, "
            "and then pass on the rerun. Not counted as noise: the FutureWarning diffusers raises when a plan uses "
            "quanto (int4 on CPU), which deprecates its own quanto quantizer.\n\n" + table(outcomes))
    return 0 if outcomes and not any(o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
