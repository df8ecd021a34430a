"""Where am I, what do I have, and the settings that must be made before diffusers is imported.

Call `configure()` once at the top of a notebook, before `import diffusers`: two settings
(`HF_ENABLE_PARALLEL_LOADING`, `HF_HOME`) are read only when the libraries are imported,
so setting them later is a silent no-op. `configure` warns when it is too late.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import pins
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


def _set_before_import(variable: str, value: str, module: str, read_back) -> None:
    """Set an env variable that `module` reads at import; warn when the module already read another value."""
    os.environ[variable] = value
    if module in sys.modules and read_back() != value:
        warnings.warn(
            f"{variable}={value!r} was set after `import {module}`, which reads it only once at import: "
            f"this setting has no effect in this kernel. Fix: restart the kernel and call "
            f"helpers.env.configure(...) before importing {module} (or anything that imports it).",
            stacklevel=3,
        )


def configure(parallel_loading: bool = False, hf_home: str = "", quiet: bool | None = None) -> None:
    """Apply the import-time settings, then the progress-bar policy. Call before `import diffusers`.

    parallel_loading: HF_ENABLE_PARALLEL_LOADING (diffusers loads shards of big models with
        several threads; only sharded diffusers models benefit).
    hf_home: HF_HOME, the Hub cache root (e.g. a Google Drive folder); "" keeps the default.
    quiet: progress bars off; None reads KIT_QUIET / CI.
    """
    if hf_home:
        hf_home = os.path.abspath(os.path.expanduser(hf_home))
        _set_before_import("HF_HOME", hf_home, "huggingface_hub", lambda: _hub_constant("HF_HOME"))
    _set_before_import(
        "HF_ENABLE_PARALLEL_LOADING",
        "1" if parallel_loading else "0",
        "diffusers",
        lambda: "1" if _diffusers_parallel_loading() else "0",
    )
    set_progress_bars(not (quiet_mode() if quiet is None else quiet))


def _hub_constant(name: str):
    from huggingface_hub import constants

    return getattr(constants, name)


def _diffusers_parallel_loading() -> bool:
    from diffusers.utils import constants

    return bool(constants.HF_ENABLE_PARALLEL_LOADING)


def set_progress_bars(enabled: bool) -> None:
    """Turn the Hub download and diffusers loading bars on or off.

    TQDM_DISABLE does not reach these bars; each library has its own switch. The denoising
    bar is per pipeline: `helpers.loading` calls `pipe.set_progress_bar_config` on each load.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if enabled else "1"
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if enabled else disable_progress_bars)()
    (diffusers_logging.enable_progress_bar if enabled else diffusers_logging.disable_progress_bar)()


def hf_token_found() -> bool:
    """Whether huggingface_hub finds a token (env HF_TOKEN, token file, Colab secret). Never returns it."""
    from huggingface_hub import get_token

    return get_token() is not None


@dataclass
class Report:
    runtime: Runtime
    python: str
    versions: dict[str, str | None]
    mismatches: list[pins.Mismatch]
    device: str
    dtype: str
    gpus: list[Accelerator]
    ram_gib: float
    hf_token_found: bool
    hf_cache: str
    parallel_loading: bool
    fits: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"runtime        {self.runtime.name}{' (CI)' if self.runtime.ci else ''}",
            f"python         {self.python}",
            *(f"{name:14s} {version or 'not installed'}" for name, version in self.versions.items()),
            f"pins           {'all match' if not self.mismatches else '; '.join(map(str, self.mismatches))}",
            f"device         {self.device} (dtype {self.dtype})",
            *(
                f"gpu {g.index}          {g.name}, {g.memory_gib:.1f} GiB, sm_{g.compute_capability[0]}"
                f"{g.compute_capability[1]}, bf16 {'yes' if g.bf16 else 'no'}"
                for g in self.gpus
            ),
            f"ram            {self.ram_gib:.1f} GiB",
            f"HF token       {'found' if self.hf_token_found else 'not found (public models only)'}",
            f"HF cache       {self.hf_cache}",
            f"parallel load  {'on' if self.parallel_loading else 'off'}",
            *(f"fits?          {model}: {verdict}" for model, verdict in self.fits.items()),
        ]
        return "\n".join(lines)


def report() -> Report:
    """Everything a user needs to know before loading a model: versions, pins, hardware, token, cache."""
    import psutil

    from . import planning

    runtime = detect_runtime()
    pinned = pins.load_pins()
    if runtime.hosted:
        pinned = {name: req for name, req in pinned.items() if name in pins.HOSTED_INSTALL}
    shown = ["torch", "diffusers", "transformers", "accelerate", "huggingface-hub"]
    gpus = accelerators()
    device = recommended_device()
    ram_gib = psutil.virtual_memory().total / 2**30
    return Report(
        runtime=runtime,
        python=platform.python_version(),
        versions={name: pins.installed_version(name) for name in shown},
        mismatches=pins.check_pins(pinned),
        device=device,
        dtype=recommended_dtype(device, gpus),
        gpus=gpus,
        ram_gib=ram_gib,
        hf_token_found=hf_token_found(),
        hf_cache=_hub_constant("HF_HUB_CACHE"),
        parallel_loading=_diffusers_parallel_loading(),
        fits=planning.what_fits(detect_hardware()),
    )


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
