"""A Colab-like runtime for running the notebooks headless, built in a temporary folder in about a second.

What it reproduces, and how (each piece is a real mechanism the kit's code sees, not a patched function):
- `google.colab` is imported when the kernel starts (a fake package on the kernel's PYTHONPATH, imported by
  `IPKernelApp.exec_lines`), and COLAB_RELEASE_TAG is set, so `helpers.env.detect_runtime()` says "colab".
- Colab's older stack (`OLD_STACK`: diffusers 0.39.0, transformers 5.15.0, accelerate 1.12.0,
  huggingface_hub 1.3.0, ipywidgets 7.7.1): a folder ahead of the venv on sys.path holding their
  `*.dist-info` (so `importlib.metadata` reports the old versions) and, except ipywidgets, a stub module
  with that `__version__` (so importing one before the install leaves an old module in `sys.modules`,
  exactly what forces a restart). The stub diffusers imports the stub huggingface_hub, as the real one does.
- pip: a fake `pip` package, ahead on the kernel's PYTHONPATH, so `python -m pip install ...` from the
  kernel records its arguments (pip-log.jsonl) and "installs" by deleting the old stack's stubs, which
  makes the venv's pinned packages visible, as a real install would. Nothing is downloaded; torch is
  never touched (the log shows what was asked for).
- git: a `git` on the kernel's PATH that "clones" the kit by copying this checkout's helpers/,
  community/ and requirements.txt into the clone folder (KIT_CLONE_ROOT=<sim>/content, Colab's /content).
- The Hub: HF_HUB_OFFLINE=1 with a Hub cache (HF_HOME=<sim>/hf) into which `cache_model` copies a
  local folder under a Hub id, so Hub-id parameters resolve through huggingface_hub's real cache lookup.
- A killed kernel (the kit's restart) shows up as nbclient's DeadKernelError; the executed notebook is
  still written by papermill with whatever output reached it.

`make test-colab` uses the same runtime with Colab's real packages instead of the stubs and fake pip
(`build(..., real_packages=True)`: tools/colab/simulate.py). What this stub version does not reproduce:
Colab's Python (3.13) and CUDA torch (the venv's CPU torch is used), a GPU,
Drive, Colab's front end and its automatic kernel restart after a kill (a new papermill run stands in),
the real old packages' code (stubs only: import side effects of the real 0.39.0 are absent), a real pip
resolve/download, and other preloaded Colab modules.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from helpers import KIT_ROOT

OLD_STACK = {  # distribution name -> (version, import name or None for metadata only)
    "diffusers": ("0.39.0", "diffusers"),
    "transformers": ("5.15.0", "transformers"),
    "accelerate": ("1.12.0", "accelerate"),
    "huggingface_hub": ("1.3.0", "huggingface_hub"),
    "ipywidgets": ("7.7.1", None),
}
KERNEL_NAME = "colab-sim"
PINNED_MODULES = ("diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors", "tokenizers")

FAKE_PIP = '''
"""Fake pip for the Colab simulation: record the call, then make the pinned packages visible."""
import json, os, re, shutil, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["SIM_PIP_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
old = Path(os.environ["SIM_OLD_STACK"])
for arg in args:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\\S+)", arg)
    if not match:
        continue
    name = match.group(1).replace("-", "_").lower()
    print(f"Collecting {arg}")
    for path in old.iterdir():
        if path.name.lower() == name or path.name.lower().startswith(name + "-"):
            shutil.rmtree(path)
print("Successfully installed " + " ".join(a for a in args if "==" in a))
'''

FAKE_GIT = '''#!{python}
"""Fake git for the Colab simulation: `git clone ... DEST` copies the kit from this checkout."""
import json, os, shutil, sys
from pathlib import Path
with open(os.environ["SIM_GIT_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:2] != ["clone"]:
    sys.exit("fake git: only clone")
if os.environ.get("SIM_GIT_MISSING_TAG"):  # the tag was never pushed: what git itself says
    branch = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--branch="))
    sys.stderr.write(f"warning: Could not find remote branch {{branch}} to clone.\\n"
                     f"fatal: Remote branch {{branch}} not found in upstream origin\\n")
    sys.exit(128)
dest, source = Path(sys.argv[-1]), Path({root!r})
dest.mkdir(parents=True)
for name in ("helpers", "community"):
    shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
for name in ("requirements.txt", "requirements-gpu.txt"):
    shutil.copy(source / name, dest / name)
'''


@dataclass
class Simulation:
    root: Path

    @property
    def content(self) -> Path:
        return self.root / "content"

    @property
    def old_stack(self) -> Path:
        return self.root / "old-stack"

    @property
    def hub_cache(self) -> Path:
        return self.root / "hf" / "hub"

    def pip_calls(self) -> list[list[str]]:
        log = self.root / "pip-log.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    def git_calls(self) -> list[list[str]]:
        log = self.root / "git-log.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    def old_versions(self) -> dict[str, str]:
        """The old distributions still present (those the fake pip has not replaced)."""
        return dict(p.name.removesuffix(".dist-info").split("-", 1) for p in self.old_stack.glob("*.dist-info"))

    def cache_model(self, hub_id: str, folder: Path | None = None) -> None:
        """Put `folder` (default: only a model_index.json) into the Hub cache as `hub_id` at revision main."""
        repo = self.hub_cache / f"models--{hub_id.replace('/', '--')}"
        commit = "0" * 39 + "1"
        snapshot = repo / "snapshots" / commit
        if folder is None:
            snapshot.mkdir(parents=True, exist_ok=True)
            (snapshot / "model_index.json").write_text('{"_class_name": "DiffusionPipeline"}')
        else:
            shutil.copytree(folder, snapshot, dirs_exist_ok=True)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    def kernel_env(self) -> dict[str, str]:
        return json.loads((self.root / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json").read_text())["env"]


def build(root: Path, python: str = sys.executable, real_packages: bool = False,
          environment: dict[str, str] | None = None) -> Simulation:
    """Create a fresh simulated runtime under `root` and its kernelspec `colab-sim` (see the module doc).

    real_packages: `python` is a venv of Colab's own packages (tools/colab/runtime.py, `make test-colab`):
    no stub stack and the real pip. `environment` is added to the kernel's.
    """
    sim = Simulation(Path(root))
    site = sim.root / "site"
    (site / "google" / "colab").mkdir(parents=True)
    (site / "google" / "colab" / "__init__.py").write_text('"""Fake google.colab (simulation)."""\n')
    (site / "google" / "colab" / "drive.py").write_text(
        "def mount(path, **kwargs):\n    raise RuntimeError('Drive is not simulated')\n")
    sim.old_stack.mkdir()
    if not real_packages:
        (site / "pip").mkdir()
        (site / "pip" / "__init__.py").write_text("")
        (site / "pip" / "__main__.py").write_text(textwrap.dedent(FAKE_PIP))
    for name, (version, module) in ({} if real_packages else OLD_STACK).items():
        info = sim.old_stack / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if module:
            (sim.old_stack / module).mkdir()
            body = f'__version__ = "{version}"\n'
            if module == "diffusers":
                body += "import huggingface_hub  # as the real diffusers does\n"
            (sim.old_stack / module / "__init__.py").write_text(body)
    bin_dir = sim.root / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(FAKE_GIT.format(python=python, root=str(KIT_ROOT)))
    (bin_dir / "git").chmod(0o755)
    sim.content.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), str(sim.old_stack)]),
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        "COLAB_RELEASE_TAG": "simulated",
        "KIT_CLONE_ROOT": str(sim.content),
        "HF_HOME": str(sim.root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "KIT_QUIET": "1",
        "SIM_PIP_LOG": str(sim.root / "pip-log.jsonl"),
        "SIM_GIT_LOG": str(sim.root / "git-log.jsonl"),
        "SIM_OLD_STACK": str(sim.old_stack),
        **(environment or {}),
    }
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.exec_lines=import google.colab"],
        "display_name": "Colab simulation", "language": "python", "env": env,
        "metadata": {"supported_encryption": ["curve"]},
    }
    spec_dir = sim.root / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return sim


@dataclass
class Run:
    executed: Path
    error: str  # "" when it ran to the end; else the exception's class name and message
    text: str  # every stream and error output, in order


def execute(sim: Simulation, notebook: Path, executed: Path, parameters: dict, before: str = "",
            upto: str | None = None, encrypted: bool = True) -> Run:
    """Run `notebook` in the simulation with papermill (cwd: <sim>/content, as Colab's /content).

    before: code for an extra first cell (what the user ran before the kit's setup).
    upto: the id of the last cell to keep (e.g. "setup"); None runs the whole notebook.
    """
    import nbformat
    import papermill

    from .runner import encrypted_kernel_manager

    notebook_node = nbformat.read(notebook, as_version=4)
    if upto is not None:
        ids = [cell.get("id") for cell in notebook_node.cells]
        notebook_node.cells = notebook_node.cells[: ids.index(upto) + 1]
    if before:
        notebook_node.cells.insert(0, nbformat.v4.new_code_cell(before))
    source = sim.root / f".{executed.name}"
    nbformat.write(notebook_node, source)
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(sim.root / "jupyter")
    error = ""
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, cwd=str(sim.content),
                                   kernel_name=KERNEL_NAME, progress_bar=False, log_output=False,
                                   **({"kernel_manager_class": encrypted_kernel_manager()} if encrypted else {}))
    except Exception as failure:  # papermill's cell errors and nbclient's DeadKernelError alike
        error = f"{type(failure).__name__}: {failure}"
    finally:
        if previous is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = previous
        source.unlink()
    return Run(executed, error, output_text(executed))


def output_text(executed: Path) -> str:
    import nbformat

    if not executed.is_file():
        return ""
    parts = []
    for cell in nbformat.read(executed, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type == "error":
                parts.append(f"{output.ename}: {output.evalue}\n")
    return "".join(parts)
