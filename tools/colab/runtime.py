"""Colab's published package set (its kit packages: tools/colab/colab-packages.txt) and a "Colab minus GPU" venv.

`freeze()` reads them; `build_venv(path)` makes a Python 3.13 virtualenv holding the packages
of that freeze which matter to the kit (the stack the kit replaces, the notebook kernel, the quantization
backend Colab ships, and the preinstalled packages whose requirements constrain the kit's pins), each at the
freeze's exact version from PyPI (torch is PyPI's CUDA build; it runs on CPU here). Used by `make test-colab`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FREEZE = HERE / "colab-packages.txt"
# What the kit touches or what constrains it; everything else in the freeze is left out of the venv.
KIT_RELEVANT = (
    "torch", "diffusers", "transformers", "huggingface-hub", "accelerate", "tokenizers", "safetensors",
    "imageio", "imageio-ffmpeg", "numpy", "pillow", "psutil", "packaging", "pyyaml", "torchao",
    "ipykernel", "ipython", "ipywidgets", "jupyter-client", "nbformat", "traitlets", "pyzmq", "tornado",
    "gradio", "gradio-client", "hf-gradio", "sentence-transformers", "peft", "datasets", "timm",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze(path: Path = FREEZE) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line (local tags such as +cu128 dropped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s+;]+)(\+\S+)?", line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def python_version(path: Path = HERE / "SOURCE") -> str:
    return re.search(r"^python (\S+)", path.read_text(), re.M).group(1)


def build_venv(venv: Path, python: str, wheels: str = "") -> None:
    """Create `venv` with `python` (3.13) and install KIT_RELEVANT at the freeze's versions, all others of the
    packages as constraints (so a dependency pip pulls in is Colab's version where the extract has it)."""
    pinned = freeze()
    venv = Path(venv)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    constraints = venv / "colab-constraints.txt"
    # Colab's torch is the cu128 build; PyPI's torch 2.11.0 is built on CUDA 13: its CUDA wheels differ.
    cuda = re.compile(r"^(nvidia-|cuda-|cupy|triton)")
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pinned.items() if not cuda.match(name)))
    wanted = [f"{name}=={pinned[name]}" for name in KIT_RELEVANT]
    extra = ["--find-links", wheels] if wheels else []
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-compile", "--progress-bar", "off",
                    *extra, "-c", str(constraints), *wanted], check=True)


if __name__ == "__main__":
    build_venv(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
