"""Where am I and what do I have: the runtime, its GPUs, the device and dtype to use.

The import-time settings and notebook 01's report are `helpers.setup`'s.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

TRUE_VALUES = {"1", "true", "yes", "on"}
QUIET_ENV = "KIT_QUIET"


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


@dataclass(frozen=True)
class Runtime:
    """The host running this code: "colab", "kaggle", "jupyter" or "python", and whether in CI."""

    name: str
    ci: bool

    @property
    def hosted(self) -> bool:
        """Colab and Kaggle bring their own CUDA torch and notebook server."""
        return self.name in ("colab", "kaggle")


def detect_runtime(environ=None, modules=None) -> Runtime:
    """Detect the host from environment variables and loaded modules (both injectable for tests)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "google.colab" in modules or "COLAB_RELEASE_TAG" in environ:
        name = "colab"
    elif "KAGGLE_KERNEL_RUN_TYPE" in environ:
        name = "kaggle"
    elif "ipykernel" in modules:
        name = "jupyter"
    else:
        name = "python"
    return Runtime(name=name, ci=truthy(environ.get("CI")))


def quiet_mode(environ=None) -> bool:
    """Progress bars off: set KIT_QUIET=1 (CI and the test harness do); on for humans."""
    environ = os.environ if environ is None else environ
    if QUIET_ENV in environ:
        return truthy(environ[QUIET_ENV])
    return truthy(environ.get("CI"))


@dataclass(frozen=True)
class Accelerator:
    index: int
    name: str
    memory_gib: float
    compute_capability: tuple[int, int]
    bf16: bool


def accelerators() -> list[Accelerator]:
    """The CUDA GPUs torch can see (empty on a CPU machine)."""
    import torch

    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = (props.major, props.minor)
        found.append(Accelerator(index, props.name, props.total_memory / 2**30, capability, capability >= (8, 0)))
    return found


def recommended_device() -> str:
    """"cuda" with a GPU, "mps" on Apple silicon, else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def recommended_dtype(device: str | None = None, gpus: list[Accelerator] | None = None) -> str:
    """bf16 on GPUs that support it (Ampere+), fp16 on older GPUs (T4) and MPS, fp32 on CPU.

    fp16/bf16 on CPU runs 80-125x slower than fp32 (measured on the pinned stack), hence fp32 there.
    """
    device = device or recommended_device()
    if device.startswith("cuda"):
        gpus = accelerators() if gpus is None else gpus
        return "bfloat16" if gpus and all(gpu.bf16 for gpu in gpus) else "float16"
    if device == "mps":
        return "float16"
    return "float32"
