"""Where am I and what do I have: the runtime, its GPUs, the device and dtype to use (settings: `helpers.setup`)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from .errors import InvalidParameterError
from .rules import nearest_existing, truthy

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
    name = ("colab" if "google.colab" in modules or "COLAB_RELEASE_TAG" in environ else
            "kaggle" if "KAGGLE_KERNEL_RUN_TYPE" in environ else "jupyter" if "ipykernel" in modules else "python")
    return Runtime(name=name, ci=truthy(environ.get("CI")))


def quiet_mode(environ=None) -> bool:
    """Progress bars off: set KIT_QUIET=1 (CI and the test harness do); on for humans."""
    environ = os.environ if environ is None else environ
    return truthy(environ[QUIET_ENV] if QUIET_ENV in environ else environ.get("CI"))


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

    props = [torch.cuda.get_device_properties(index) for index in range(torch.cuda.device_count())]
    return [Accelerator(index, p.name, p.total_memory / GIB, (p.major, p.minor), (p.major, p.minor) >= (8, 0))
            for index, p in enumerate(props)]


def recommended_device() -> str:
    """"cuda" with a GPU, "mps" on Apple silicon, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def recommended_dtype(device: str | None = None, gpus: list[Accelerator] | None = None) -> str:
    """bf16 on GPUs that have it (Ampere+), fp16 on older GPUs (T4) and MPS, fp32 on CPU (half precision is slow)."""
    device = device or recommended_device()
    if device.startswith("cuda"):
        gpus = accelerators() if gpus is None else gpus
        return "bfloat16" if gpus and all(gpu.bf16 for gpu in gpus) else "float16"
    return "float16" if device == "mps" else "float32"


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
        count = f"{len(self.gpus)}x " if len(self.gpus) > 1 else ""
        gpu = (f"{count}{self.gpu_name or 'GPU'} {self.gpus[0]:g} GiB usable{'' if self.bf16 else ', no native bf16'}"
               if self.gpus else "no GPU")
        return f"{self.name}: {gpu}; RAM {self.ram_gib:g} GiB; disk {self.disk_bytes / 1e9:.0f} GB free"


# Named hardware, as these machines commonly report it (hardware="auto" measures yours; T4: no native bf16).
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
    gpus = accelerators()
    place = nearest_existing(Path(import_module("huggingface_hub.constants").HF_HUB_CACHE if cache_dir is None
                                  else cache_dir))
    return Hardware("this machine", tuple(round(g.memory_gib - 0.5, 1) for g in gpus),
                    round(import_module("psutil").virtual_memory().available / GIB, 1), shutil.disk_usage(place).free,
                    bf16=bool(gpus) and all(g.bf16 for g in gpus), gpu_name=gpus[0].name if gpus else "")


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
    raise InvalidParameterError("hardware", hardware, f"choose one of {', '.join(repr(h) for h in HARDWARE_NAMES)}",
                                'or give figures: {"gpus": [15], "ram_gib": 12.7, "disk_gb": 78, "bf16": False}.')
