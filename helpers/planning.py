"""Will it fit? The kit's one fit engine: sizes from configs alone, hardware profiles, the LoadPlan.

`plan_load(model_id, hardware=...)` decides, before a byte of weights is downloaded, each component's
dtype, quantization and placement, the offload mode, and predicts peak VRAM, peak RAM during load,
download bytes and free disk, with a verdict, its reasons and ranked alternatives. `plan_balanced`
predicts diffusers' own `device_map="balanced"` placement (tested against diffusers' functions).

Sizes come from instantiating each component on the `meta` device: no weights are read. Two sizes
are kept: the exact one (parameters x bytes, tied weights once: what the weights really take) and
diffusers' own estimate (accelerate's init_empty_weights plus buffers), because `plan_balanced`
predicts what diffusers will do and diffusers places components by its estimate.

The placement rule is diffusers' `_assign_components_to_devices` (0.42.1): components largest first,
GPUs largest first, visited in a zig-zag cycle (0, 1, 1, 0, ...); a component bigger than the current
GPU's remaining budget goes to the CPU without advancing the cycle, and diffusers' map keeps only the
last such component.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import architectures, folders, quantization, rules
from .errors import InvalidParameterError, LocalPathNotFoundError, PlanDoesNotFitError
from .quantization import weight_bytes_per_param
from .rules import HARDWARE_NAMES, OFFLOADS

GIB = 2**30

# Memory a program can use on common GPUs (GiB): the card's total as torch reports it, less ~0.5 GiB
# for the CUDA context. Budgets for planning, not measurements.
COMMON_SETUPS = {
    "1x T4": [14.2],
    "2x T4": [14.2, 14.2],
    "1x L4": [21.5],
    "1x A100-40": [39.0],
    "1x A100-80": [78.7],
    "2x A100-80": [78.7, 78.7],
}


@dataclass(frozen=True)
class ComponentSize:
    name: str
    class_name: str
    params: int
    bytes: int  # exact: parameters x bytes per element at the chosen dtype
    diffusers_bytes: int  # what diffusers' balanced placement uses (init_empty_weights, buffers included)


def config_folder(model_id: str) -> Path:
    """A folder with model_index.json and the components' configs: local, shipped with the kit, or from the Hub.

    From the Hub only the JSON configs are downloaded (a few KB), never weights.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise LocalPathNotFoundError(
                f"{model_id!r} has no model_index.json: planning needs a pipeline folder (the one save_pretrained "
                "or snapshot_download wrote), not a single model."
            )
        return path
    if model_id in architectures.available():
        return architectures.folder(model_id)
    from huggingface_hub import snapshot_download

    from .loading import hub_offline, resolve_model_source

    resolve_model_source(model_id)  # a clear error for a bad id, a missing path, or an uncached id offline
    return Path(snapshot_download(model_id, allow_patterns=["model_index.json", "*/*.json"],
                                  local_files_only=hub_offline()))


def _diffusers_estimate(library: str, class_name: str, directory: Path, dtype: torch.dtype) -> int:
    import accelerate
    from accelerate.utils import compute_module_sizes

    from .diffusers_logs import without_empty_fp32_notes

    with accelerate.init_empty_weights(), without_empty_fp32_notes():
        module = architectures._instantiate(library, class_name, directory).to(dtype=dtype)
    return compute_module_sizes(module, dtype=dtype)[""]


def component_sizes(model_id: str, dtype="bfloat16") -> list[ComponentSize]:
    """Exact and diffusers-estimated sizes of every weighted component, largest first (diffusers' order)."""
    from .loading import resolve_dtype

    dtype = resolve_dtype(dtype, "cuda")
    folder = config_folder(model_id)
    index = json.loads((folder / "model_index.json").read_text())
    sizes = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        library, class_name = spec
        if not (folder / name / "config.json").is_file():
            continue  # schedulers, tokenizers and processors hold no weights
        component_dtype = dtype.get(name, dtype["default"]) if isinstance(dtype, dict) else dtype
        module = architectures.build_from_config(library, class_name, folder / name, "meta", component_dtype)
        if not isinstance(module, torch.nn.Module):
            continue
        params = sum(p.numel() for p in module.parameters())
        exact = sum(p.numel() * p.element_size() for p in module.parameters())
        estimate = _diffusers_estimate(library, class_name, folder / name, component_dtype)
        sizes.append(ComponentSize(name, class_name, params, exact, estimate))
    return sorted(sizes, key=lambda size: size.diffusers_bytes, reverse=True)


def parse_budgets(gpu_memory_gib) -> dict[int, int]:
    """[15, 15] (GiB per GPU) -> {0: bytes, 1: bytes}, refusing what diffusers would misread."""
    return rules.gpu_budgets("gpu_memory_gib", gpu_memory_gib)


def activation_headroom(height: int, width: int) -> int:
    """The kit's rule of thumb for denoiser activations beside the weights: 1 GiB + 1.5 GiB per megapixel.

    An estimate (attention via SDPA grows linearly with the latent tokens), not a measurement.
    """
    return int((1.0 + 1.5 * height * width / 2**20) * GIB)


@dataclass
class DevicePlan:
    budgets: dict[int, int]
    placement: dict[str, int | str]  # where each component lands ("cpu" for every overflow)
    diffusers_map: dict[str, int | str]  # what pipe.hf_device_map will hold
    used: dict[int, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def fits_on_gpus(self) -> bool:
        return "cpu" not in self.placement.values()


def plan_balanced(sizes: list[ComponentSize], budgets: dict[int, int], height: int = 1024,
                  width: int = 1024) -> DevicePlan:
    """Predict device_map="balanced" (same rule as diffusers) and say where it goes wrong."""
    ordered = sorted(sizes, key=lambda size: size.diffusers_bytes, reverse=True)
    gpus = dict(sorted(budgets.items(), key=lambda item: item[1], reverse=True))
    cycle = list(gpus) + list(gpus)[::-1]
    remaining = dict(gpus)
    placement: dict[str, int | str] = {}
    overflow: list[str] = []
    position = 0
    for size in ordered:
        device = cycle[position % len(cycle)]
        if size.diffusers_bytes > remaining[device]:
            placement[size.name] = "cpu"
            overflow.append(size.name)
        else:
            placement[size.name] = device
            remaining[device] -= size.diffusers_bytes
            position += 1
    diffusers_map = {name: device for name, device in placement.items() if device != "cpu"}
    if overflow:
        diffusers_map[overflow[-1]] = "cpu"
    plan = DevicePlan(budgets, placement, diffusers_map, {d: budgets[d] - remaining[d] for d in budgets})
    by_name = {size.name: size for size in sizes}
    for name in overflow:
        plan.warnings.append(
            f"{name} ({by_name[name].diffusers_bytes / GIB:.1f} GiB) does not fit the GPU whose turn it is: diffusers "
            "runs it on the CPU, slowly. Prefer enable_model_cpu_offload(), or more GPU memory."
        )
    if len(overflow) > 1:
        dropped = ", ".join(overflow[:-1])
        plan.warnings.append(
            f"diffusers records only the last overflowing component in hf_device_map: {dropped} will be missing "
            "from it (diffusers 0.42.1 overwrites its 'cpu' entry)."
        )
    headroom = activation_headroom(height, width)
    if ordered and placement[ordered[0].name] != "cpu":
        device = placement[ordered[0].name]
        if remaining[device] < headroom:
            plan.warnings.append(
                f"GPU {device} keeps {remaining[device] / GIB:.1f} GiB beside {ordered[0].name}; activations at "
                f"{width}x{height} need about {headroom / GIB:.1f} GiB (the kit's estimate). Lower the resolution "
                "or give that GPU more room."
            )
    return plan


def smallest_setup(sizes: list[ComponentSize], gpu_gib: float, height: int = 1024, width: int = 1024,
                   max_gpus: int = 8) -> str:
    """The least hardware of `gpu_gib`-sized GPUs that runs the model: one GPU, else one GPU with model CPU
    offload (slower) and/or the fewest GPUs that hold it with device_map="balanced"."""
    headroom = activation_headroom(height, width)
    budget = int(gpu_gib * GIB)
    total = sum(size.diffusers_bytes for size in sizes)
    if total + headroom <= budget:
        return f"one {gpu_gib:g} GiB GPU (device_map='cuda')"
    options = []
    largest = max(size.diffusers_bytes for size in sizes)
    if largest + headroom <= budget:
        options.append(f"one {gpu_gib:g} GiB GPU with enable_model_cpu_offload() ({total / GIB:.1f} GiB in CPU RAM)")
    for count in range(2, max_gpus + 1):
        plan = plan_balanced(sizes, {i: budget for i in range(count)}, height, width)
        if plan.fits_on_gpus and not plan.warnings:
            options.append(f"{count} GPUs of {gpu_gib:g} GiB (device_map='balanced')")
            break
    if options:
        return " or ".join(options)
    return (f"no setup of {gpu_gib:g} GiB GPUs: the largest component alone takes {largest / GIB:.1f} GiB; "
            "use enable_sequential_cpu_offload() (very slow), quantization, or a bigger GPU")


def format_sizes(sizes: list[ComponentSize]) -> str:
    lines = [f"{'component':16s} {'class':36s} {'params':>16s} {'GiB':>7s}"]
    lines += [f"{s.name:16s} {s.class_name:36s} {s.params:>16,d} {s.bytes / GIB:>7.2f}" for s in sizes]
    params, total = sum(s.params for s in sizes), sum(s.bytes for s in sizes)
    lines.append(f"{'total':16s} {'':36s} {params:>16,d} {total / GIB:>7.2f}")
    return "\n".join(lines)


def format_plan(plan: DevicePlan, sizes: list[ComponentSize], bar_width: int = 30) -> str:
    """The plan as a table (component, GiB, device) and a bar per GPU of its budget used."""
    lines = [f"{'component':16s} {'GiB':>7s}  device"]
    lines += [f"{s.name:16s} {s.diffusers_bytes / GIB:>7.2f}  {plan.placement[s.name]}" for s in sizes]
    for device, budget in plan.budgets.items():
        share = plan.used[device] / budget
        bar = "#" * round(share * bar_width)
        lines.append(f"GPU {device}: [{bar:<{bar_width}s}] {plan.used[device] / GIB:.1f} / {budget / GIB:.1f} GiB")
    cpu = sum(s.diffusers_bytes for s in sizes if plan.placement[s.name] == "cpu")
    if cpu:
        lines.append(f"CPU: {cpu / GIB:.1f} GiB")
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Hardware: named profiles, detection, explicit figures
# ---------------------------------------------------------------------------------------------------

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


# Named hardware. Figures are what these machines commonly report (they change; hardware="auto" measures
# yours). T4: a 15 GB card, torch sees ~14.7 GiB, ~14.2-14.7 GiB usable; no native bf16 (sm_75).
# Colab free tier: 12.7 GiB RAM, ~78 GB free disk.
PROFILES: dict[str, Hardware] = {
    "colab-t4": Hardware("colab-t4", (14.2,), 12.7, 78_000_000_000, bf16=False, gpu_name="Tesla T4"),
    # L4 (24 GB, ~21.5 GiB usable), A100 40/80 GB: native bf16. RAM and disk: Colab's usual L4/A100 runtimes and a
    # typical 80 GB cloud VM; approximate.
    "colab-l4": Hardware("colab-l4", (21.5,), 51.0, 200_000_000_000, gpu_name="NVIDIA L4"),
    "colab-a100": Hardware("colab-a100", (39.0,), 83.5, 200_000_000_000, gpu_name="A100-SXM4-40GB"),
    # Kaggle: 2x T4, ~29 GiB RAM, ~73 GB of disk in all (only /kaggle/working's 20 GB is kept after a session).
    "kaggle-2xt4": Hardware("kaggle-2xt4", (14.2, 14.2), 29.0, 73_000_000_000, bf16=False, gpu_name="Tesla T4"),
    "a100-80": Hardware("a100-80", (78.7,), 117.0, 500_000_000_000, gpu_name="A100-SXM4-80GB"),
    "cpu": Hardware("cpu", (), 16.0, 100_000_000_000),  # a 16 GB machine without a GPU (laptop-class)
}


def detect_hardware(cache_dir: str | None = None) -> Hardware:
    """This machine: its CUDA GPUs (less 0.5 GiB each), available RAM, free disk where the Hub cache is."""
    import shutil

    import psutil

    from . import env

    gpus = env.accelerators()
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


# ---------------------------------------------------------------------------------------------------
# Precision rules per family, and how each repo stores its weights
# ---------------------------------------------------------------------------------------------------

# Families whose activations overflow float16 (NaN latents, black images): never planned in fp16.
NOT_FP16_SAFE = {
    # Qwen-Image: fp16 gives NaN/black images; Comfy-Org/ComfyUI#10751.
    "QwenImage": "Qwen-Image overflows in float16 (NaN latents, black images; Comfy-Org/ComfyUI#10751)",
    # FLUX: fp16 gives black images / NaNs; huggingface/diffusers#9096.
    "Flux": "FLUX overflows in float16 (NaN latents, black images; huggingface/diffusers#9096)",
}
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


def fp16_unsafe(pipeline_class) -> str:
    """Why float16 breaks this pipeline family ("" when it is fp16-safe). A repo with its own pipeline code
    names it as [module, Class] in model_index.json: the class decides."""
    name = pipeline_class[-1] if isinstance(pipeline_class, list | tuple) else str(pipeline_class or "")
    return next((why for prefix, why in NOT_FP16_SAFE.items() if name.startswith(prefix)), "")

# How shipped repos store their weights, so download bytes follow from params x stored dtype:
# (dtype of the default files, the half-precision `variant` the repo also has, gated).
# SD 1.5 and SDXL ship fp32 files plus an fp16 variant; Qwen-Image and FLUX.1-dev ship bf16 only.
STORAGE = {
    "Qwen/Qwen-Image": ("bfloat16", None, False),
    "black-forest-labs/FLUX.1-dev": ("bfloat16", None, True),
    "stabilityai/stable-diffusion-xl-base-1.0": ("float32", "fp16", False),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("float32", "fp16", False),
}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

OFFLOAD_CALLS = {
    "none": "", "model": "pipe.enable_model_cpu_offload()",
    "group": 'pipe.enable_group_offload(torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1, '
             'use_stream=True)',
    "sequential": "pipe.enable_sequential_cpu_offload()",
}
DENOISERS = quantization.DENOISERS
LARGE_TEXT_ENCODER = quantization.BIG_TEXT_ENCODER_PARAMS  # params: quantized with the denoiser
RAM_BASE_GIB = {"gpu": 2.5, "cpu": 1.5}  # python + torch (+ CUDA libraries) + diffusers, before any weights
# diffusers reads each safetensors shard into CPU memory (model_loading_utils.load_state_dict, map_location
# "cpu"), then moves its tensors to the device: loading to a GPU peaks at about one shard of RAM. Shards are at
# most 10 GB (save_pretrained's default max_shard_size; FLUX.1-dev's transformer shards are ~10 GB).
SHARD_BYTES = 10_000_000_000


def quant_backend(name: str, on_gpu: bool) -> str:
    """The library that implements a quantization name here: helpers.quantization's choice (never refused here:
    the plan reports a GPU-only backend on a CPU profile as a blocking reason instead)."""
    if name.startswith("gguf:"):
        return "gguf"
    return {"int8": "bitsandbytes" if on_gpu else "torchao", "nf4": "bitsandbytes", "int4": "quanto"}.get(name, "")


def _gguf_bytes_per_weight(name: str) -> float:
    """Bytes per weight of a GGUF file, from the quantization type in its name (Q4_K when none is named)."""
    upper = name.removeprefix("gguf:").upper()
    for kind, size in quantization.GGUF_BYTES_PER_PARAM.items():
        if kind in upper:
            return size
    return quantization.GGUF_BYTES_PER_PARAM["Q4_K"]


# ---------------------------------------------------------------------------------------------------
# Per-component statistics from configs (meta device, cached)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComponentStats:
    """Parameter counts that decide memory under each quantization and offload mode."""

    name: str
    class_name: str
    params: int
    linear_params: int  # nn.Linear weights: what int8/int4/nf4 quantize
    block_params: int  # the largest block of a ModuleList (what one group of group offloading holds)
    outside_params: int  # params outside every ModuleList (one more group)
    leaf_params: int  # the largest leaf module (what sequential offload holds)


_STATS: dict[str, list[ComponentStats]] = {}


def component_stats(folder: Path) -> list[ComponentStats]:
    """Stats of every weighted component of the pipeline folder, built on the meta device (no weights)."""
    key = f"{Path(folder).resolve()}@{(Path(folder) / 'model_index.json').stat().st_mtime_ns}"
    if key in _STATS:
        return _STATS[key]
    index = json.loads((Path(folder) / "model_index.json").read_text())
    stats = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        if not (Path(folder) / name / "config.json").is_file():
            continue
        with _config_notes_hidden():
            module = architectures.build_from_config(spec[0], spec[1], Path(folder) / name, "meta", torch.bfloat16)
        if not isinstance(module, torch.nn.Module):
            continue
        if not _quantized_checkpoint(Path(folder) / name):  # quantized weights have other shapes by design
            folders.check_shapes(Path(folder) / name, {k: tuple(v.shape) for k, v in module.state_dict().items()})
        stats.append(_module_stats(name, spec[1], module))
    _STATS[key] = stats
    return stats


def _quantized_checkpoint(component_folder: Path) -> bool:
    config = json.loads((component_folder / "config.json").read_text())
    return isinstance(config, dict) and "quantization_config" in config


@contextmanager
def _config_notes_hidden():
    """Config notes logged while building on the meta device (unused keys, rope renames) are about the config
    files, not the plan; they show again, once, when the model is really loaded. Errors still show."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _module_stats(name: str, class_name: str, module: torch.nn.Module) -> ComponentStats:
    params = _count(module)
    seen = set()
    linear = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear) and id(sub.weight) not in seen:
            seen.add(id(sub.weight))
            linear += sub.weight.numel()
    lists = [sub for sub in module.modules() if isinstance(sub, torch.nn.ModuleList)]
    block = max((_count(child) for sub in lists for child in sub if child is not None), default=0)
    nested = {id(inner) for outer in lists for inner in outer.modules() if inner is not outer}
    in_lists = sum(_count(sub) for sub in lists if id(sub) not in nested)
    leaf = max((sum(p.numel() for p in sub.parameters(recurse=False)) for sub in module.modules()), default=0)
    return ComponentStats(name, class_name, params, linear, block, max(params - in_lists, 0), leaf)


# ---------------------------------------------------------------------------------------------------
# The LoadPlan
# ---------------------------------------------------------------------------------------------------

@dataclass
class ComponentPlan:
    name: str
    class_name: str
    params: int
    dtype: str
    quantization: str  # "none", "int8", "int4", "nf4", "gguf:<file>"
    backend: str  # "", "bitsandbytes", "torchao", "quanto", "gguf"
    placement: str  # "cuda", "cuda:1", "cpu", or how offloading moves it
    bytes: int  # weights as planned


@dataclass
class LoadPlan:
    """Everything decided before loading, and why. `fits` False means: do not download."""

    model_id: str
    pipeline_class: str
    hardware: Hardware
    components: list[ComponentPlan]
    dtype: str  # the compute dtype ("bfloat16", "float16", "float32")
    quantization: str
    offload: str  # "none", "model", "group", "sequential"
    device_map: str | None  # what to pass to from_pretrained ("cuda", "balanced", or None: load on CPU)
    variant: str | None  # the repo's half-precision file variant to download, if it has one
    height: int
    width: int
    vram_bytes: int  # predicted peak on the busiest GPU: weights there + activations
    activation_bytes: int
    ram_bytes: int  # predicted peak process RAM during load (and generation, for offloaded weights)
    download_bytes: int | None  # None: unknown (an uncached Hub id while offline)
    fits: bool = True
    reasons: list[str] = field(default_factory=list)  # why it does not fit (empty when it fits)
    notes: list[str] = field(default_factory=list)  # costs and caveats of the chosen plan
    alternatives: list[str] = field(default_factory=list)  # ranked, when it does not fit

    @property
    def verdict(self) -> str:
        return "fits" if self.fits else "does not fit"

    @property
    def resolved_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def device(self) -> str:
        """Where the weights compute: "cuda" for a GPU plan (device_map "cuda"/"balanced", or offload), else "cpu"."""
        if self.device_map in ("cuda", "balanced") or (self.offload != "none" and self.hardware.gpus):
            return "cuda"
        return self.device_map or "cpu"

    @property
    def offload_call(self) -> str:
        return OFFLOAD_CALLS[self.offload]

    def quantized(self) -> dict[str, str]:
        """{component: quantization} for the components this plan quantizes (for helpers.quantization)."""
        return {c.name: c.quantization for c in self.components if c.quantization != "none"}

    def summary(self) -> str:
        """One line: dtype, quantization, offload, VRAM, RAM, download, verdict."""
        quant = ", ".join(f"{n} {q}" for n, q in self.quantized().items()) or "none"
        gpu = f"VRAM {self.vram_bytes / GIB:.1f}/{max(self.hardware.gpus, default=0):g} GiB, " \
            if self.hardware.gpus else ""
        download = "?" if self.download_bytes is None else f"{self.download_bytes / 1e9:.1f} GB"
        return (f"{self.dtype}, quantization {quant}, offload {self.offload}, device_map {self.device_map!r}: "
                f"{gpu}RAM {self.ram_bytes / GIB:.1f}/{self.hardware.ram_gib:g} GiB, download {download}: "
                f"{self.verdict}")

    def __str__(self) -> str:
        hw = self.hardware
        lines = [f"Load plan for {self.model_id} ({self.pipeline_class}) on {hw.describe()}",
                 f"{'component':16s} {'class':36s} {'params':>9s}  {'dtype':9s} {'quantization':22s} "
                 f"{'placement':26s} {'GiB':>6s}"]
        for c in self.components:
            quant = c.quantization + (f" ({c.backend})" if c.backend else "")
            lines.append(f"{c.name:16s} {c.class_name[:36]:36s} {c.params / 1e9:>8.2f}B  {c.dtype:9s} {quant:22s} "
                         f"{c.placement:26s} {c.bytes / GIB:>6.2f}")
        total = sum(c.bytes for c in self.components)
        lines.append(f"{'total weights':16s} {'':36s} {sum(c.params for c in self.components) / 1e9:>8.2f}B  "
                     f"{'':9s} {'':22s} {'':26s} {total / GIB:>6.2f}")
        lines.append(f"offload         {self.offload}{'  -> ' + self.offload_call if self.offload_call else ''}")
        lines.append(f"device_map      {self.device_map!r}; dtype {self.dtype}; variant {self.variant!r}")
        if hw.gpus:
            busiest = " on the busiest GPU" if len(hw.gpus) > 1 else ""
            lines.append(f"peak VRAM       {self.vram_bytes / GIB:.1f} GiB{busiest} of {max(hw.gpus):g} "
                         f"(activations at {self.width}x{self.height}: {self.activation_bytes / GIB:.1f} GiB, "
                         "the kit's estimate)")
        lines.append(f"peak RAM        {self.ram_bytes / GIB:.1f} GiB of {hw.ram_gib:g}")
        download = "unknown (configs only; the Hub cannot be asked)" if self.download_bytes is None else \
            f"{self.download_bytes / 1e9:.1f} GB"
        lines.append(f"download        {download}; disk free {hw.disk_bytes / 1e9:.0f} GB")
        lines.append(f"verdict         {self.verdict.upper()}")
        lines += [f"  reason: {r}" for r in self.reasons]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  alternative {i}: {a}" for i, a in enumerate(self.alternatives, start=1)]
        return "\n".join(lines)


def choose_dtype(family: str, dtype, hardware: Hardware, on_gpu: bool) -> tuple[str, list[str], list[str]]:
    """(compute dtype, notes, blocking reasons) for a pipeline family on this hardware.

    GPU with native bf16: bf16. T4 (no native bf16): fp16 for fp16-safe families; for the others bf16,
    which runs emulated on a T4 (it works, more slowly), because fp16 gives black images and fp32 doubles the
    weights. CPU: fp32, because fp16/bf16 matmuls on CPU are 80-125x slower (measured on the pinned stack).
    """
    if isinstance(dtype, dict):
        dtype = dtype.get("default", "auto")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    from .rules import DTYPE_ALIASES

    unsafe = fp16_unsafe(family)
    notes, blocking = [], []
    if dtype == "auto":
        if not on_gpu:
            chosen = "float32"
            notes.append("float32 on CPU: float16/bfloat16 matmuls run 80-125x slower there (measured)")
        elif hardware.bf16:
            chosen = "bfloat16"
        elif unsafe:
            chosen = "bfloat16"
            notes.append(f"bfloat16 although this GPU has no native bf16: {unsafe}. PyTorch emulates bf16 on a "
                         "T4: it works but runs slower than fp16 would; float32 would double the weights")
        else:
            chosen = "float16"
    elif isinstance(dtype, str) and dtype.lower() in DTYPE_ALIASES:
        chosen = DTYPE_ALIASES[dtype.lower()]
    else:
        raise InvalidParameterError("dtype", dtype, "choose 'auto', 'float32', 'float16' or 'bfloat16'")
    if chosen == "float16" and unsafe:
        blocking.append(f"dtype float16: {unsafe}. Use bfloat16 (dtype='auto' picks it)")
    if chosen == "bfloat16" and on_gpu and not hardware.bf16 and dtype != "auto":
        notes.append("bfloat16 runs emulated on this GPU (no native bf16): slower than float16")
    if on_gpu and chosen == "float16" and family.startswith("StableDiffusionXL"):
        notes.append(f"SDXL's VAE has force_upcast: it decodes in float32 (more memory and time); "
                     f"{FP16_FIX_VAE} runs in float16 as it is (notebook 03 swaps it in)")
    if not on_gpu and chosen != "float32":
        notes.append(f"{chosen} on CPU runs 80-125x slower than float32 (measured on the pinned stack)")
    return chosen, notes, blocking


def _quantizable(stats: ComponentStats) -> bool:
    """Only the denoiser and large text encoders are quantized (small ones gain little and lose quality)."""
    return stats.name in DENOISERS or (stats.name.startswith("text_encoder") and stats.params >= LARGE_TEXT_ENCODER)


def _local_gguf(quantization: str) -> Path | None:
    """The GGUF file of "gguf:<path>" when it is already on this machine (its size is then exact)."""
    path = Path(quantization.removeprefix("gguf:")).expanduser()
    return path if quantization.startswith("gguf:") and path.is_file() else None


def _component_bytes(stats: ComponentStats, dtype: str, quantization: str) -> int:
    size = DTYPE_BYTES[dtype]
    if _local_gguf(quantization):
        return _local_gguf(quantization).stat().st_size  # the file holds the whole denoiser, as it stays in memory
    if quantization == "none":
        return stats.params * size
    per_weight = _gguf_bytes_per_weight(quantization) if quantization.startswith("gguf:") else \
        weight_bytes_per_param(quantization, quant_backend(quantization, on_gpu=True))
    return int(stats.linear_params * per_weight + (stats.params - stats.linear_params) * size)


def cached_variant(model_id: str) -> str | None:
    """"fp16" when the cached snapshot of `model_id` holds fp16 weight files (an earlier run downloaded the
    variant): offline, the plan cannot ask the Hub, and loading must pick the files that are there."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(model_id, "model_index.json")
    if not isinstance(index, str):
        return None
    return "fp16" if any(Path(index).parent.glob("*/*.fp16.*")) else None


def download_bytes(model_id: str, stats: list[ComponentStats], dtype: str, quantization: str) -> tuple[
        int | None, str | None]:
    """(bytes the plan downloads, variant) for the files this plan loads; 0 for a local folder.

    Shipped architectures: params x the dtype the repo stores (its fp16 `variant` when it has one and the
    plan computes in half precision or quantizes). A GGUF transformer replaces the repo's transformer files.
    """
    if Path(model_id).expanduser().is_dir():
        return 0, None
    if model_id not in STORAGE:
        from .sources import hub_offline

        half = dtype != "float32" or quantization != "none"
        if hub_offline():
            return None, cached_variant(model_id) if half else None
        try:
            total, variant = hub_download_bytes(model_id, [s.name for s in stats], half, gguf=quantization)
        except Exception:  # noqa: BLE001 - an unanswered size question must not stop the plan: it says "unknown"
            return None, None
        if quantization.startswith("gguf:") and not _local_gguf(quantization):
            total += sum(int(s.params * _gguf_bytes_per_weight(quantization)) for s in stats if s.name in DENOISERS)
        return total, variant
    stored, variant, _ = STORAGE[model_id]
    use_variant = variant if variant and (dtype != "float32" or quantization != "none") else None
    size = DTYPE_BYTES["float16" if use_variant else stored]
    total = 0
    for s in stats:
        if quantization.startswith("gguf:") and s.name in DENOISERS:
            total += 0 if _local_gguf(quantization) else int(s.params * _gguf_bytes_per_weight(quantization))
        else:
            total += s.params * size
    return total, use_variant


def hub_download_bytes(model_id: str, components: list[str], half: bool, gguf: str = "none",
                       revision: str | None = None) -> tuple[int, str | None]:
    """(bytes, variant) of the weight files `from_pretrained` fetches for `components`, from the Hub's file list
    (one metadata request, no download). With `half`, a component's fp16 variant files are counted where the
    repo has them, as `variant="fp16"` would load them; otherwise its default files.
    """
    from huggingface_hub import HfApi, constants

    info = HfApi(endpoint=constants.ENDPOINT).model_info(model_id, revision=revision, files_metadata=True)
    files = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    total, variant = 0, None
    for name in components:
        weights = {f: size for f, size in files.items() if f.startswith(f"{name}/") and f.endswith(".safetensors")}
        fp16 = {f: size for f, size in weights.items() if ".fp16." in f}
        default = {f: size for f, size in weights.items() if f not in fp16}
        chosen = fp16 if half and fp16 else default or fp16
        if half and fp16:
            variant = "fp16"
        if gguf.startswith("gguf:") and name in DENOISERS:
            continue  # a GGUF file replaces the repo's denoiser weights (download_bytes adds its size)
        total += sum(chosen.values())
    return total, variant


def _candidates(quantization: str, offload: str, device_map: str, hardware: Hardware, on_gpu: bool):
    """(quantization, offload, balanced) in the kit's order of preference: full precision before quantized,
    no offload before model offload before group offload; sequential offload (very slow) last."""
    if on_gpu:
        order = [("none", "none"), ("none", "model"), ("none", "group"), ("int8", "none"), ("int8", "model"),
                 ("nf4", "none"), ("nf4", "model"), ("int8", "group"), ("nf4", "group"),
                 ("none", "sequential"), ("int8", "sequential"), ("nf4", "sequential")]
    else:
        order = [("none", "none"), ("int8", "none"), ("int4", "none")]
    wanted = [(q, o) for q, o in order if quantization in ("auto", q) and offload in ("auto", o)]
    if not wanted:
        wanted = [(quantization if quantization != "auto" else "none", offload if offload != "auto" else "none")]
    out = []
    for q, o in wanted:
        if on_gpu and o == "none":
            if device_map in ("auto", "cuda"):
                out.append((q, o, False))
            if len(hardware.gpus) > 1 and device_map in ("auto", "balanced") or device_map == "balanced":
                out.append((q, o, True))
        else:
            out.append((q, o, False))
    return out


def _evaluate(model_id: str, family: str, stats: list[ComponentStats], hardware: Hardware, dtype: str,
              quantization: str, offload: str, balanced: bool, on_gpu: bool, height: int, width: int,
              dtype_notes: list[str], blocking: list[str]) -> LoadPlan:
    activations = activation_headroom(height, width)
    download, variant = download_bytes(model_id, stats, dtype, quantization)
    stored = 2 if variant else DTYPE_BYTES[STORAGE[model_id][0]] if model_id in STORAGE else DTYPE_BYTES[dtype]
    one_shard = min(max((s.params * stored for s in stats), default=0), SHARD_BYTES)  # RAM while loading to a GPU
    components = []
    for s in stats:
        quant = quantization if quantization != "none" and _quantizable(s) else "none"
        if quant.startswith("gguf:") and s.name not in DENOISERS:
            quant = "none"  # a GGUF file holds one model: the transformer
        components.append(ComponentPlan(s.name, s.class_name, s.params, dtype, quant,
                                        quant_backend(quant, on_gpu) if quant != "none" else "", "", 0))
        components[-1].bytes = _component_bytes(s, dtype, quant)
    total = sum(c.bytes for c in components)
    largest = max((c.bytes for c in components), default=0)
    reasons = list(blocking)
    notes = list(dtype_notes)
    gib = GIB
    device_map = None
    vram = 0
    if not on_gpu:
        for c in components:
            c.placement = "cpu"
        ram = int(RAM_BASE_GIB["cpu"] * gib) + total + activations
        if offload != "none":
            reasons.append(f"offload={offload!r} needs a GPU: on CPU the weights already live in RAM")
        if quantization == "nf4" or any(c.backend == "bitsandbytes" for c in components):
            reasons.append("bitsandbytes (nf4/int8 on GPU) refuses without a GPU; on CPU use int8 (torchao) or "
                           "int4 (quanto)")
    else:
        ram_base = int(RAM_BASE_GIB["gpu"] * gib)
        if offload == "none" and balanced:
            sizes = [ComponentSize(c.name, c.class_name, c.params, c.bytes, c.bytes) for c in components]
            placed = plan_balanced(sizes, {i: int(g * gib) for i, g in enumerate(hardware.gpus)}, height, width)
            for c in components:
                device = placed.placement[c.name]
                c.placement = "cpu (overflow)" if device == "cpu" else f"cuda:{device}"
            denoiser = next((c.name for c in components if c.name in DENOISERS), components[0].name)
            vram = max(used + (activations if placed.placement.get(denoiser) == device else 0)
                       for device, used in placed.used.items())
            if not placed.fits_on_gpus:
                reasons.append("device_map='balanced' cannot place every component whole on a GPU: "
                               + "; ".join(placed.warnings))
            elif placed.warnings:
                reasons += placed.warnings
            device_map = "balanced"
            ram = ram_base + one_shard
        elif offload == "none":
            for c in components:
                c.placement = "cuda"
            vram = total + activations
            device_map = "cuda"
            # diffusers loads component by component, one shard at a time through CPU memory (SHARD_BYTES)
            ram = ram_base + one_shard
        else:
            if offload == "model":
                vram = largest + activations
                placement = "cpu -> cuda while it runs"
                notes.append("model CPU offload: each component moves to the GPU while it runs; the whole model "
                             "waits in CPU RAM (a little slower per image)")
            elif offload == "group":
                stat = {s.name: s for s in stats}
                vram = max(int((2 * stat[c.name].block_params + stat[c.name].outside_params)
                               * c.bytes / max(c.params, 1)) for c in components) + activations
                placement = "cpu, one block at a time"
                notes.append("group offloading (block level, CUDA streams): blocks stream to the GPU as needed; "
                             "the whole model waits in (pinned) CPU RAM; pass low_cpu_mem_usage=True if RAM is tight")
            else:
                stat = {s.name: s for s in stats}
                vram = max(int(stat[c.name].leaf_params * c.bytes / max(c.params, 1)) for c in components) \
                    + activations
                placement = "cpu, one layer at a time"
                notes.append("sequential CPU offload: every layer moves to the GPU for each step: very slow "
                             "(minutes per image)")
            for c in components:
                c.placement = placement
            ram = ram_base + total
        budget = max(hardware.gpus)
        if vram > budget * gib and not (balanced and offload == "none"):
            reasons.append(f"peak VRAM {vram / gib:.1f} GiB (weights on the GPU + {activations / gib:.1f} GiB of "
                           f"activations at {width}x{height}) is over the GPU's {budget:g} GiB")
    if ram > hardware.ram_gib * gib:
        where = "the whole model waits in RAM" if on_gpu and offload != "none" else \
            "the weights live in RAM" if not on_gpu else "one shard at a time"
        reasons.append(f"peak RAM {ram / gib:.1f} GiB ({where}) is over the machine's {hardware.ram_gib:g} GiB")
    if download is not None and download > hardware.disk_bytes:
        reasons.append(f"the download ({download / 1e9:.1f} GB) is bigger than the free disk "
                       f"({hardware.disk_bytes / 1e9:.0f} GB)")
    if variant:
        notes.append(f"downloads the repo's {variant} files: from_pretrained(..., variant={variant!r})")
    if model_id in STORAGE and STORAGE[model_id][2]:
        notes.append(f"{model_id} is gated: accept its licence at https://huggingface.co/{model_id} and set "
                     "HF_TOKEN")
    backends = sorted({c.backend for c in components if c.backend})
    if backends:
        which = ", ".join(f"{c.name}: {c.quantization}" for c in components if c.quantization != "none")
        notes.append(f"quantized with {', '.join(backends)} through diffusers' PipelineQuantizationConfig ({which}); "
                     "install only that backend")
    return LoadPlan(model_id, family, hardware, components, dtype, quantization, offload, device_map, variant,
                    height, width, int(vram), activations, int(ram), download, not reasons, reasons, notes)


def plan_load(model_id: str, hardware="auto", *, dtype="auto", quantization: str = "auto", offload: str = "auto",
              device_map: str = "auto", height: int = 1024, width: int = 1024,
              alternatives: bool = True) -> LoadPlan:
    """The plan for loading `model_id` on `hardware` with the user's choices ("auto" lets the plan decide).

    Reads configs only (shipped architectures, a local folder, or a Hub id's JSON files): no weights. Tries
    candidates in the kit's order of preference (see `_candidates`) and keeps the first that fits; when none
    fits, it returns the user's (or the most natural) choice with `fits=False`, its reasons, and ranked
    alternatives: looser choices that fit, a known smaller family that fits, or hardware where it fits.
    """
    hw = resolve_hardware(hardware)
    rules.quantization("quantization", quantization)
    rules.choice("offload", offload, OFFLOADS)
    rules.choice("device_map", device_map, rules.DEVICE_MAPS)
    folder = config_folder(model_id)
    family = json.loads((folder / "model_index.json").read_text())["_class_name"]
    stats = component_stats(folder)
    on_gpu = bool(hw.gpus) and device_map != "cpu"
    if device_map in ("cuda", "balanced") and not hw.gpus:
        raise InvalidParameterError("device_map", device_map, f"{hw.name} has no GPU", "Use 'auto' or 'cpu'.")
    chosen_dtype, dtype_notes, blocking = choose_dtype(family, dtype, hw, on_gpu)
    plans = [_evaluate(model_id, family, stats, hw, chosen_dtype, q, o, b, on_gpu, height, width, dtype_notes,
                       blocking) for q, o, b in _candidates(quantization, offload, device_map, hw, on_gpu)]
    plan = next((p for p in plans if p.fits), None) or min(plans, key=lambda p: _shortfall(p, device_map))
    if not plan.fits and alternatives:
        plan.alternatives = _alternatives(model_id, family, stats, hw, dtype, quantization, offload, device_map,
                                          height, width)
    return plan


def what_fits(hardware="auto", height: int = 1024, width: int = 1024) -> dict[str, str]:
    """Each model whose configs ship with the kit -> the plan's one-line answer on `hardware` (notebook 01)."""
    hardware = resolve_hardware(hardware)
    return {model: plan_load(model, hardware, height=height, width=width, alternatives=False).summary()
            for model in STORAGE if model in architectures.available()}


def _shortfall(plan: LoadPlan, device_map: str) -> float:
    """How far a plan that does not fit is from fitting: its worst need/available ratio. A refused plan shows
    the closest candidate (e.g. "nf4 + model offload, RAM 17.8 of 12.7 GiB"), the most useful one to read."""
    hw = plan.hardware
    ratios = [plan.ram_bytes / (hw.ram_gib * GIB), (plan.download_bytes or 0) / hw.disk_bytes]
    if hw.gpus:
        ratios.append(plan.vram_bytes / (max(hw.gpus) * GIB))
    if plan.device_map == "balanced" and device_map != "balanced":
        ratios.append(math.inf)  # its VRAM figure hides the components that overflow to the CPU
    return max(ratios)


def _alternatives(model_id, family, stats, hw, dtype, quantization, offload, device_map, height, width) -> list[str]:
    found = []
    if (dtype, quantization, offload, device_map) != ("auto",) * 4:
        looser = plan_load(model_id, hw, height=height, width=width, alternatives=False)
        if looser.fits:
            found.append(f"let the plan choose (dtype, quantization, offload, device_map 'auto'): {looser.summary()}")
    if not hw.gpus or device_map == "cpu":
        half = plan_load(model_id, hw, dtype="bfloat16", quantization=quantization, offload=offload,
                         device_map=device_map, height=height, width=width, alternatives=False)
        if half.fits:
            found.append(f"dtype='bfloat16' (80-125x slower than float32 on CPU): {half.summary()}")
    if height * width > 512 * 512:
        small = plan_load(model_id, hw, dtype=dtype, quantization=quantization, offload=offload,
                          device_map=device_map, height=512, width=512, alternatives=False)
        if small.fits:
            found.append(f"a smaller image (height=width=512): {small.summary()}")
    size = sum(s.params for s in stats)
    others = {other: sum(s.params for s in component_stats(architectures.folder(other)))
              for other in architectures.available() if other != model_id and other in STORAGE}
    for other in sorted(others, key=others.get, reverse=True):  # the largest (most capable) smaller family first
        if others[other] >= size:
            continue
        other_plan = plan_load(other, hw, height=height, width=width, alternatives=False)
        if other_plan.fits:
            gated = " (gated: accept its licence on the Hub, then set HF_TOKEN)" if STORAGE[other][2] else ""
            found.append(f"a smaller model that fits here, model_id={other!r}{gated}: {other_plan.summary()}")
    for name, profile in PROFILES.items():
        if profile == hw or not profile.gpus:
            continue
        bigger = plan_load(model_id, profile, height=height, width=width, alternatives=False)
        if bigger.fits:
            found.append(f"hardware={name!r}: {bigger.summary()}")
            break
    return found


# ---------------------------------------------------------------------------------------------------
# The notebooks' gate: stop before any download when nothing fits; plan_only stops cleanly
# ---------------------------------------------------------------------------------------------------

PLAN_ONLY_KEEP = "plan_only"  # cells whose source mentions this still run after a plan_only stop


def enforce(plan: LoadPlan, *, force: bool = False, plan_only: bool = False) -> None:
    """Call right after printing the plan, before anything is downloaded.

    plan_only=True: the notebook stops here, successfully: every later cell of this kernel is skipped (it runs
    as an empty cell), so papermill exits 0 having downloaded no weights. Cells that mention `plan_only` (the
    parameters and this one) still run: set plan_only = False and rerun this cell to go on.
    Otherwise, a plan that does not fit raises PlanDoesNotFitError (reasons and alternatives) unless
    force=True; papermill still writes the executed notebook with the plan printed.
    """
    _skip_later_cells(False)
    if plan_only:
        _skip_later_cells(True)
        print("plan_only=True: stopping here; nothing was downloaded. The remaining cells are skipped in this "
              "kernel (set plan_only = False and rerun this cell to continue).")
        return
    if not plan.fits:
        if not force:
            raise PlanDoesNotFitError(plan)
        print("force=True: loading although the plan does not fit; expect an out-of-memory error or a full disk.")


def _skip_cell(lines: list[str]) -> list[str]:
    return lines if any(PLAN_ONLY_KEEP in line for line in lines) else []


def _skip_later_cells(on: bool) -> None:
    """Install or remove the IPython input transformer that empties later cells (no-op outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    transformers = shell.input_transformers_post
    transformers[:] = [t for t in transformers if t is not _skip_cell]
    if on:
        transformers.append(_skip_cell)
