"""Where am I and what do I have: the runtime, its GPUs, the device and dtype to use.

The import-time settings and notebook 01's report are `helpers.setup`'s.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidParameterError
from .rules import truthy

QUIET_ENV = "KIT_QUIET"
GIB = 2**30


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


@dataclass(frozen=True)
class Hardware:
    """What a plan is made for. GPU figures are usable GiB (the card less ~0.5 GiB of CUDA context)."""

    name: str
    gpus: tuple[float, ...]  # usable GiB per GPU; () for a CPU-only machine
    ram_gib: float  # system RAM the process can fill
    disk_bytes: int  # free disk for the Hub cache
    bf16: bool = True  # native bfloat16 (compute capability 8.0+: Ampere, Ada, Hopper)
    gpu_name: str = ""

    def describe(self) -> str:
        if self.gpus:
            count = f"{len(self.gpus)}x " if len(self.gpus) > 1 else ""
            gpu = (f"{count}{self.gpu_name or 'GPU'} {self.gpus[0]:g} GiB usable"
                   f"{'' if self.bf16 else ', no native bf16'}")
        else:
            gpu = "no GPU"
        return f"{self.name}: {gpu}; RAM {self.ram_gib:g} GiB; disk {self.disk_bytes / 1e9:.0f} GB free"


# Named hardware, as these machines commonly report it (hardware="auto" measures yours). T4: torch sees
# ~14.7 GiB, ~14.2 usable, no native bf16 (sm_75); Colab free tier: 12.7 GiB RAM, ~78 GB free disk.
# L4/A100 RAM and disk: Colab's usual runtimes; Kaggle: 2x T4, ~29 GiB RAM, ~73 GB disk.
PROFILES: dict[str, Hardware] = {
    "colab-t4": Hardware("colab-t4", (14.2,), 12.7, 78_000_000_000, bf16=False, gpu_name="Tesla T4"),
    "colab-l4": Hardware("colab-l4", (21.5,), 51.0, 200_000_000_000, gpu_name="NVIDIA L4"),
    "colab-a100": Hardware("colab-a100", (39.0,), 83.5, 200_000_000_000, gpu_name="A100-SXM4-40GB"),
    "kaggle-2xt4": Hardware("kaggle-2xt4", (14.2, 14.2), 29.0, 73_000_000_000, bf16=False, gpu_name="Tesla T4"),
    "a100-80": Hardware("a100-80", (78.7,), 117.0, 500_000_000_000, gpu_name="A100-SXM4-80GB"),
    "cpu": Hardware("cpu", (), 16.0, 100_000_000_000),  # a 16 GB machine without a GPU (laptop-class)
}
HARDWARE_NAMES = ("auto", *PROFILES)  # the `hardware` parameter's choices


def detect_hardware(cache_dir: str | None = None) -> Hardware:
    """This machine: its CUDA GPUs (less 0.5 GiB each), available RAM, free disk where the Hub cache is."""
    import shutil

    import psutil

    gpus = accelerators()
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    place = Path(cache_dir)
    while not place.exists() and place != place.parent:
        place = place.parent
    return Hardware(
        "this machine", tuple(round(g.memory_gib - 0.5, 1) for g in gpus),
        round(psutil.virtual_memory().available / GIB, 1), shutil.disk_usage(place).free,
        bf16=bool(gpus) and all(g.bf16 for g in gpus), gpu_name=gpus[0].name if gpus else "",
    )


def resolve_hardware(hardware="auto") -> Hardware:
    """"auto" (this machine), a profile name, a Hardware, or a dict of figures:
    {"gpus": [15], "ram_gib": 12.7, "disk_gb": 78, "bf16": False}."""
    if isinstance(hardware, Hardware):
        return hardware
    if hardware == "auto":
        return detect_hardware()
    if isinstance(hardware, str) and hardware in PROFILES:
        return PROFILES[hardware]
    if isinstance(hardware, dict):
        try:
            gpus = tuple(float(g) for g in hardware.get("gpus", ()))
            return Hardware("custom", gpus, float(hardware["ram_gib"]), int(float(hardware["disk_gb"]) * 1e9),
                            bf16=bool(hardware.get("bf16", True)))
        except (KeyError, TypeError, ValueError):
            pass
    raise InvalidParameterError(
        "hardware", hardware, f"choose one of {', '.join(repr(h) for h in HARDWARE_NAMES)}",
        'or give figures: {"gpus": [15], "ram_gib": 12.7, "disk_gb": 78, "bf16": False}.',
    )
