"""Will it fit? `plan_load` decides dtype, quantization, placement and offload from configs alone (built on the meta
device) and predicts VRAM, RAM, download and disk, with reasons and alternatives."""

from __future__ import annotations

import functools
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import architectures, folders, hub, rules
from .env import GIB, PROFILES, Hardware, resolve_hardware
from .errors import InvalidParameterError, LocalPathNotFoundError, PlanDoesNotFitError
from .generation import STAGED_OUTPUTS
from .rules import BIG_TEXT_ENCODER_PARAMS, DENOISERS, DTYPE_ALIASES, FP16_FIX_VAE, OFFLOADS, backend_for, fp16_unsafe

# Usable GiB on common GPUs: the card's total as torch reports it, less ~0.5 GiB of CUDA context.
COMMON_SETUPS = {"1x T4": [14.2], "2x T4": [14.2, 14.2], "1x L4": [21.5], "1x A100-40": [39.0],
                 "1x A100-80": [78.7], "2x A100-80": [78.7, 78.7]}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ComponentSize:
    name: str
    class_name: str
    params: int
    bytes: int  # exact: parameters x bytes per element at the chosen dtype
    diffusers_bytes: int  # what diffusers' balanced placement uses (init_empty_weights, buffers included)


@dataclass(frozen=True)
class ComponentStats:
    """Parameter counts that decide memory under each dtype, quantization and offload mode."""

    name: str
    class_name: str
    params: int
    linear_params: int  # nn.Linear weights: what int8/int4/nf4 quantize
    block_params: int  # the largest block of a ModuleList (what one group of group offloading holds)
    outside_params: int  # params outside every ModuleList (one more group)
    leaf_params: int  # the largest leaf module (what sequential offload holds)
    estimate_numel: int = 0  # floating tensors as diffusers counts them (T5's tie broken, buffers included)
    estimate_fixed_bytes: int = 0  # integer and bool buffers, which keep their dtype

    def sizes(self, dtype: str) -> ComponentSize:
        size = DTYPE_BYTES[dtype]
        return ComponentSize(self.name, self.class_name, self.params, self.params * size,
                             self.estimate_numel * size + self.estimate_fixed_bytes)


def config_folder(model_id: str) -> Path:
    """A folder with model_index.json and the components' configs: local, shipped, or (JSON only) from the Hub."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise LocalPathNotFoundError(f"{model_id!r} has no model_index.json: planning needs a pipeline folder "
                                         "(the one save_pretrained or snapshot_download wrote), not a single model.")
        return path
    if model_id in architectures.available():
        return architectures.folder(model_id)
    from huggingface_hub import snapshot_download
    hub.resolve_model_source(model_id)  # a clear error for a bad id, a missing path, or an uncached id offline
    return Path(snapshot_download(model_id, allow_patterns=["model_index.json", "*/*.json"],
                                  local_files_only=hub.hub_offline()))


def component_stats(folder: Path) -> list[ComponentStats]:
    """Stats of every weighted component of the pipeline folder, built once per architecture on the meta device."""
    folder = Path(folder).resolve()
    configs = [folder / "model_index.json", *sorted(folder.glob("*/config.json"))]
    return _walk(str(folder), tuple(p.stat().st_mtime_ns for p in configs))


@functools.cache
def _walk(folder: str, mtimes: tuple[int, ...]) -> list[ComponentStats]:
    import accelerate

    from .diffusers_logs import without_empty_fp32_notes
    stats = []
    for name, spec in hub.read_model_index(folder).items():
        directory = Path(folder) / name
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None or \
                not (directory / "config.json").is_file():
            continue  # schedulers, tokenizers and processors have no config.json and hold no weights
        with accelerate.init_empty_weights(), without_empty_fp32_notes(), _config_notes_hidden():
            module = architectures.instantiate(spec[0], spec[1], directory)  # as diffusers builds it to place it
        if not isinstance(module, torch.nn.Module):
            continue
        config = json.loads((directory / "config.json").read_text())
        if not (isinstance(config, dict) and "quantization_config" in config):  # quantized shapes differ by design
            folders.check_shapes(directory, {k: tuple(v.shape) for k, v in module.state_dict().items()})
        stats.append(_module_stats(name, spec[1], module))
    return stats


@contextmanager
def _config_notes_hidden():
    """Hides config notes (unused keys, rope renames) while building on meta: they show at the real load."""
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
    from accelerate.utils import named_module_tensors
    tensors = [tensor for _, tensor in named_module_tensors(module, recurse=True)]  # before re-tying, as diffusers
    numel = sum(t.numel() for t in tensors if t.is_floating_point())
    fixed = sum(t.numel() * t.element_size() for t in tensors if not t.is_floating_point())
    if hasattr(module, "tie_weights"):
        module.tie_weights()  # init_empty_weights breaks T5's tied embedding; the real load ties it
    params = _count(module)
    linear = sum(m.weight.numel() for m in {id(m.weight): m for m in module.modules()
                                              if isinstance(m, torch.nn.Linear)}.values())
    lists = [sub for sub in module.modules() if isinstance(sub, torch.nn.ModuleList)]
    block = max((_count(child) for sub in lists for child in sub if child is not None), default=0)
    nested = {id(inner) for outer in lists for inner in outer.modules() if inner is not outer}
    in_lists = sum(_count(sub) for sub in lists if id(sub) not in nested)
    leaf = max((sum(p.numel() for p in sub.parameters(recurse=False)) for sub in module.modules()), default=0)
    return ComponentStats(name, class_name, params, linear, block, max(params - in_lists, 0), leaf, numel, fixed)


def dtype_name(dtype) -> str:
    """A dtype as the plan names it ("auto": half precision, as on a GPU)."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype == "auto":
        return "bfloat16"
    if isinstance(dtype, str) and dtype.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype.lower()]
    raise InvalidParameterError("dtype", dtype, "choose 'auto', 'float32', 'float16' or 'bfloat16'")


def component_sizes(model_id: str, dtype="bfloat16") -> list[ComponentSize]:
    """Exact and diffusers-estimated sizes, largest first; `dtype`: a name, or per-component names with "default"."""
    if isinstance(dtype, dict) and "default" not in dtype:
        raise InvalidParameterError("dtype", dtype, 'a per-component dict needs a "default" key')
    per = {k: dtype_name(v) for k, v in dtype.items()} if isinstance(dtype, dict) else {"default": dtype_name(dtype)}
    sizes = [s.sizes(per.get(s.name, per["default"])) for s in component_stats(config_folder(model_id))]
    return sorted(sizes, key=lambda size: size.diffusers_bytes, reverse=True)


def parse_budgets(gpu_memory_gib) -> dict[int, int]:
    """[15, 15] (GiB per GPU) -> {0: bytes, 1: bytes}, refusing what diffusers would misread."""
    return rules.gpu_budgets("gpu_memory_gib", gpu_memory_gib)


def activation_headroom(height: int, width: int) -> int:
    """The kit's rule of thumb for denoiser activations beside the weights: 1 GiB + 1.5 GiB per megapixel."""
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
    """device_map="balanced" as diffusers' own `_assign_components_to_devices` places it, with the kit's warnings."""
    from diffusers.pipelines.pipeline_loading_utils import _assign_components_to_devices
    ordered = sorted(sizes, key=lambda size: size.diffusers_bytes, reverse=True)
    gpus = dict(sorted(budgets.items(), key=lambda item: item[1], reverse=True))
    mapping = _assign_components_to_devices({s.name: s.diffusers_bytes for s in ordered}, gpus)
    diffusers_map = {name: device for device, names in mapping.items() for name in names}
    placement = {s.name: diffusers_map.get(s.name, "cpu") for s in ordered}
    overflow = [s for s in ordered if placement[s.name] == "cpu"]
    used = {d: sum(s.diffusers_bytes for s in ordered if placement[s.name] == d) for d in budgets}
    plan = DevicePlan(budgets, placement, diffusers_map, used)
    plan.warnings += [f"{s.name} ({s.diffusers_bytes / GIB:.1f} GiB) does not fit the GPU whose turn it is: diffusers "
                      "runs it on the CPU, slowly. Prefer enable_model_cpu_offload(), or more GPU memory."
                      for s in overflow]
    if len(overflow) > 1:
        plan.warnings.append(f"diffusers records only the last overflowing component in hf_device_map: "
                             f"{', '.join(s.name for s in overflow[:-1])} will be missing from it (diffusers 0.42.1 "
                             "overwrites its 'cpu' entry).")
    headroom = activation_headroom(height, width)
    if ordered and (device := placement[ordered[0].name]) != "cpu" and \
            (remaining := budgets[device] - used[device]) < headroom:
        plan.warnings.append(f"GPU {device} keeps {remaining / GIB:.1f} GiB beside {ordered[0].name}; activations at "
                             f"{width}x{height} need about {headroom / GIB:.1f} GiB (the kit's estimate). Lower the "
                             "resolution or give that GPU more room.")
    return plan


def smallest_setup(sizes: list[ComponentSize], gpu_gib: float, height: int = 1024, width: int = 1024) -> str:
    """The least hardware of `gpu_gib`-sized GPUs that runs the model: one, one with offload, or fewest balanced."""
    headroom, budget = activation_headroom(height, width), int(gpu_gib * GIB)
    total = sum(s.diffusers_bytes for s in sizes)
    if total + headroom <= budget:
        return f"one {gpu_gib:g} GiB GPU (device_map='cuda')"
    options, largest = [], max(s.diffusers_bytes for s in sizes)
    if largest + headroom <= budget:
        options.append(f"one {gpu_gib:g} GiB GPU with enable_model_cpu_offload() ({total / GIB:.1f} GiB in CPU RAM)")
    for count in range(2, 9):  # up to 8 GPUs
        plan = plan_balanced(sizes, {i: budget for i in range(count)}, height, width)
        if plan.fits_on_gpus and not plan.warnings:
            options.append(f"{count} GPUs of {gpu_gib:g} GiB (device_map='balanced')")
            break
    return " or ".join(options) if options else (
        f"no setup of {gpu_gib:g} GiB GPUs: the largest component alone takes {largest / GIB:.1f} GiB; "
        "use enable_sequential_cpu_offload() (very slow), quantization, or a bigger GPU")


def format_plan(plan: DevicePlan, sizes: list[ComponentSize], bar_width: int = 30) -> str:
    """The plan as a table (component, GiB, device) and a bar per GPU of its budget used."""
    lines = [f"{'component':16s} {'GiB':>7s}  device"]
    lines += [f"{s.name:16s} {s.diffusers_bytes / GIB:>7.2f}  {plan.placement[s.name]}" for s in sizes]
    for device, budget in plan.budgets.items():
        bar = "#" * round(plan.used[device] / budget * bar_width)
        lines.append(f"GPU {device}: [{bar:<{bar_width}s}] {plan.used[device] / GIB:.1f} / {budget / GIB:.1f} GiB")
    cpu = sum(s.diffusers_bytes for s in sizes if plan.placement[s.name] == "cpu")
    if cpu:
        lines.append(f"CPU: {cpu / GIB:.1f} GiB")
    return "\n".join(lines + [f"warning: {w}" for w in plan.warnings])


# ---- Quantized bytes: every backend quantizes only nn.Linear weights; the rest keeps the load dtype ----
BYTES_PER_PARAM = {"int8": 1.0, "int4": 0.5, "nf4": 0.5}  # a quantized Linear weight, the data alone
# Scales beside the data, per parameter: bitsandbytes nf4 one float32 absmax per block of 64 (diffusers' default,
# no double quantization); quanto int4 a scale and a shift (2 bytes each) per group of 128.
SCALE_BYTES_PER_PARAM = {("nf4", "bitsandbytes"): 4 / 64, ("int4", "quanto"): 2 * 2 / 128}
# GGUF block layouts (bytes per block / parameters per block) of the types diffusers 0.42.1 reads:
# ggml's own table (gguf.GGML_QUANT_SIZES), copied so planning needs no gguf install.
GGUF_BYTES_PER_PARAM = {
    "F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32, "Q5_0": 22 / 32, "Q5_1": 24 / 32, "Q4_0": 18 / 32,
    "Q4_1": 20 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256, "Q4_K": 144 / 256, "Q3_K": 110 / 256, "Q2_K": 84 / 256,
}


def weight_bytes_per_param(quantization: str, backend: str) -> float:
    """Bytes a quantized Linear weight takes per parameter, block scales included: the planner's figure."""
    name, _ = rules.parse_quantization(quantization)
    return BYTES_PER_PARAM[name] + SCALE_BYTES_PER_PARAM.get((name, backend), 0.0)


def _gguf_bytes_per_weight(name: str) -> float:
    """Bytes per weight of a GGUF file, from the quantization type in its name (Q4_K when none is named)."""
    upper = name.removeprefix("gguf:").upper()
    return next((size for kind, size in GGUF_BYTES_PER_PARAM.items() if kind in upper), GGUF_BYTES_PER_PARAM["Q4_K"])


# How shipped repos store their weights: (dtype of the default files, the half-precision `variant` it has, gated).
STORAGE = {"Qwen/Qwen-Image": ("bfloat16", None, False), "black-forest-labs/FLUX.1-dev": ("bfloat16", None, True),
           "stabilityai/stable-diffusion-xl-base-1.0": ("float32", "fp16", False),
           "stable-diffusion-v1-5/stable-diffusion-v1-5": ("float32", "fp16", False)}
OFFLOAD_CALLS = {"none": "", "staged": "", "model": "pipe.enable_model_cpu_offload()",
                 "sequential": "pipe.enable_sequential_cpu_offload()",
                 "group": 'pipe.enable_group_offload(torch.device("cuda"), offload_type="block_level", '
                          'num_blocks_per_group=1, use_stream=True)'}
RAM_BASE_GIB = {"gpu": 2.5, "cpu": 1.5}  # python + torch (+ CUDA libraries) + diffusers, before any weights
# diffusers reads one safetensors shard at a time into CPU memory (at most 10 GB: save_pretrained's default)
SHARD_BYTES = 10_000_000_000


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
    offload: str  # "none", "staged", "model", "group", "sequential"
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
    stages: list[tuple[str, int, int]] = field(default_factory=list)  # staged: (stage, peak VRAM, peak RAM)

    @property
    def verdict(self) -> str:
        return ("fits (staged)" if self.stages else "fits") if self.fits else "does not fit"

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
        gpu = f"VRAM {self.vram_bytes / GIB:.1f}/{max(self.hardware.gpus):g} GiB, " if self.hardware.gpus else ""
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
        lines += [f"{'total weights':16s} {'':36s} {sum(c.params for c in self.components) / 1e9:>8.2f}B  "
                  f"{'':9s} {'':22s} {'':26s} {sum(c.bytes for c in self.components) / GIB:>6.2f}",
                  f"offload         {self.offload}{'  -> ' + self.offload_call if self.offload_call else ''}",
                  f"device_map      {self.device_map!r}; dtype {self.dtype}; variant {self.variant!r}"]
        lines += [f"stage {stage:9s} VRAM {vram / GIB:.1f} GiB, RAM {ram / GIB:.1f} GiB" for stage, vram, ram in
                  self.stages]
        if hw.gpus:
            lines.append(f"peak VRAM       {self.vram_bytes / GIB:.1f} GiB"
                         f"{' on the busiest GPU' if len(hw.gpus) > 1 else ''} of {max(hw.gpus):g} "
                         f"(activations at {self.width}x{self.height}: {self.activation_bytes / GIB:.1f} GiB, "
                         "the kit's estimate)")
        download = "unknown (configs only; the Hub cannot be asked)" if self.download_bytes is None else \
            f"{self.download_bytes / 1e9:.1f} GB"
        lines += [f"peak RAM        {self.ram_bytes / GIB:.1f} GiB of {hw.ram_gib:g}",
                  f"download        {download}; disk free {hw.disk_bytes / 1e9:.0f} GB",
                  f"verdict         {self.verdict.upper()}"]
        lines += [f"  reason: {r}" for r in self.reasons] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines + [f"  alternative {i}: {a}" for i, a in enumerate(self.alternatives, start=1)])


def choose_dtype(family: str, dtype, hardware: Hardware, on_gpu: bool) -> tuple[str, list[str], list[str]]:
    """(dtype, notes, blocking reasons), the "auto" rule: native bf16, else fp16 (bf16 where fp16 breaks); CPU fp32."""
    dtype = dtype.get("default", "auto") if isinstance(dtype, dict) else dtype
    unsafe, notes, blocking = fp16_unsafe(family), [], []
    if dtype == "auto":
        chosen = "float32" if not on_gpu else "bfloat16" if hardware.bf16 or unsafe else "float16"
        if not on_gpu:
            notes.append("float32 on CPU: float16/bfloat16 matmuls run 80-125x slower there (measured)")
        elif not hardware.bf16 and unsafe:
            notes.append(f"bfloat16 although this GPU has no native bf16: {unsafe}. PyTorch emulates bf16 on a "
                         "T4: it works but runs slower than fp16 would; float32 would double the weights")
    else:
        chosen = dtype_name(dtype)
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


def _local_gguf(quantization: str) -> Path | None:
    """The GGUF file of "gguf:<path>" when it is already on this machine (its size is then exact)."""
    path = Path(quantization.removeprefix("gguf:")).expanduser()
    return path if quantization.startswith("gguf:") and path.is_file() else None


def _component_bytes(stats: ComponentStats, dtype: str, quantization: str) -> int:
    size = DTYPE_BYTES[dtype]
    if gguf := _local_gguf(quantization):
        return gguf.stat().st_size  # the file holds the whole denoiser, as it stays in memory
    if quantization == "none":
        return stats.params * size
    per_weight = _gguf_bytes_per_weight(quantization) if quantization.startswith("gguf:") else \
        weight_bytes_per_param(quantization, backend_for(quantization, on_gpu=True))
    return int(stats.linear_params * per_weight + (stats.params - stats.linear_params) * size)


def download_bytes(model_id: str, stats: list[ComponentStats], dtype: str, quantization: str) -> tuple[
        int | None, str | None]:
    """(bytes the plan downloads, variant); 0 for a local folder. A GGUF file replaces the denoiser's files."""
    if Path(model_id).expanduser().is_dir():
        return 0, None
    if model_id not in STORAGE:
        half = dtype != "float32" or quantization != "none"
        if hub.hub_offline():  # loading must pick the files there: fp16 ones if an earlier run downloaded them
            index = hub.cached_file(model_id, "model_index.json")
            fp16 = index is not None and any(Path(index).parent.glob("*/*.fp16.*"))
            return None, "fp16" if half and fp16 else None
        try:
            total, variant = hub_download_bytes(model_id, half, gguf=quantization)
        except Exception:  # noqa: BLE001 - an unanswered size question must not stop the plan: it says "unknown"
            return None, None
        if quantization.startswith("gguf:") and not _local_gguf(quantization):
            total += sum(int(s.params * _gguf_bytes_per_weight(quantization)) for s in stats if s.name in DENOISERS)
        return total, variant
    stored, variant, _ = STORAGE[model_id]
    use_variant = variant if variant and (dtype != "float32" or quantization != "none") else None
    size, gguf = DTYPE_BYTES["float16" if use_variant else stored], quantization.startswith("gguf:")
    return sum((0 if _local_gguf(quantization) else int(s.params * _gguf_bytes_per_weight(quantization)))
               if gguf and s.name in DENOISERS else s.params * size for s in stats), use_variant


def hub_download_bytes(model_id: str, half: bool, gguf: str = "none") -> tuple[int, str | None]:
    """(bytes, variant) of the files `from_pretrained` fetches: the fp16 variant with `half`, no denoiser for GGUF."""
    files, variant = hub.weight_files(model_id, variant=None), None
    if half:
        try:
            fp16 = hub.weight_files(model_id, variant="fp16")
        except ValueError:  # diffusers: no fp16 variant files in this repo at all
            fp16 = files
        if fp16 != files:
            files, variant = fp16, "fp16"
    replaced = tuple(f"{name}/" for name in DENOISERS) if gguf.startswith("gguf:") else ()
    return sum(size for name, size in files.items() if not name.startswith(replaced)), variant


def _candidates(quantization: str, offload: str, device_map: str, hardware: Hardware, on_gpu: bool, staged: bool):
    """(quantization, offload, balanced) in the kit's order of preference, sequential offload (very slow) last."""
    order = [("none", "none"), ("none", "staged"), ("none", "model"), ("none", "group"), ("int8", "none"),
             ("int8", "staged"), ("int8", "model"), ("nf4", "none"), ("nf4", "staged"), ("nf4", "model"),
             ("int8", "group"), ("nf4", "group"), ("none", "sequential"), ("int8", "sequential"),
             ("nf4", "sequential")] if on_gpu else [("none", "none"), ("int8", "none"), ("int4", "none")]
    order = [(q, o) for q, o in order if staged or o != "staged"]
    wanted = [(q, o) for q, o in order if quantization in ("auto", q) and offload in ("auto", o)] or \
        [(quantization if quantization != "auto" else "none", offload if offload != "auto" else "none")]
    out = []
    for q, o in wanted:
        on_gpus = on_gpu and o == "none"
        if not on_gpus or device_map in ("auto", "cuda"):
            out.append((q, o, False))
        if on_gpus and (len(hardware.gpus) > 1 and device_map in ("auto", "balanced") or device_map == "balanced"):
            out.append((q, o, True))
    return out


def _evaluate(model_id: str, family: str, stats: list[ComponentStats], hardware: Hardware, dtype: str,
              quantization: str, offload: str, balanced: bool, on_gpu: bool, height: int, width: int,
              dtype_notes: list[str], blocking: list[str]) -> LoadPlan:
    activations = activation_headroom(height, width)
    download, variant = download_bytes(model_id, stats, dtype, quantization)
    stored = 2 if variant else DTYPE_BYTES[STORAGE[model_id][0]] if model_id in STORAGE else DTYPE_BYTES[dtype]
    def shard(names) -> int:  # RAM while loading to a GPU: one shard of the largest component loaded
        return min(max((s.params * stored for s in stats if s.name in names), default=0), SHARD_BYTES)
    one_shard = shard({s.name for s in stats})
    components = []
    for s in stats:
        # only the denoiser and big text encoders (small ones gain little and lose quality); a GGUF file holds one model
        big = s.name.startswith("text_encoder") and s.params >= BIG_TEXT_ENCODER_PARAMS
        quant = quantization if s.name in DENOISERS or big and not quantization.startswith("gguf:") else "none"
        components.append(ComponentPlan(s.name, s.class_name, s.params, dtype, quant, backend_for(quant, on_gpu),
                                        "", _component_bytes(s, dtype, quant)))
    total, largest = sum(c.bytes for c in components), max((c.bytes for c in components), default=0)
    reasons, notes, device_map, vram, placement = list(blocking), list(dtype_notes), None, 0, "cpu"
    plan_stages = []
    stat = {s.name: s for s in stats}
    if not on_gpu:
        ram = int(RAM_BASE_GIB["cpu"] * GIB) + total + activations
        if offload != "none":
            reasons.append(f"offload={offload!r} needs a GPU: on CPU the weights already live in RAM")
        if quantization == "nf4" or any(c.backend == "bitsandbytes" for c in components):
            reasons.append("bitsandbytes (nf4/int8 on GPU) refuses without a GPU; on CPU use int8 (torchao) or "
                           "int4 (quanto)")
    else:
        ram_base = int(RAM_BASE_GIB["gpu"] * GIB)
        if offload == "none" and balanced:
            sizes = [ComponentSize(c.name, c.class_name, c.params, c.bytes, c.bytes) for c in components]
            placed = plan_balanced(sizes, {i: int(g * GIB) for i, g in enumerate(hardware.gpus)}, height, width)
            for c in components:
                device = placed.placement[c.name]
                c.placement = "cpu (overflow)" if device == "cpu" else f"cuda:{device}"
            denoiser = next((c.name for c in components if c.name in DENOISERS), components[0].name)
            vram = max(used + (activations if placed.placement.get(denoiser) == device else 0)
                       for device, used in placed.used.items())
            reasons += placed.warnings if placed.fits_on_gpus else [
                "device_map='balanced' cannot place every component whole on a GPU: " + "; ".join(placed.warnings)]
            device_map, ram, placement = "balanced", ram_base + one_shard, ""  # placed per component above
        elif offload == "none":
            vram, device_map, ram, placement = total + activations, "cuda", ram_base + one_shard, "cuda"
        elif offload == "staged":  # 1: text encoders alone, encode, free; 2: the rest, called with the embeddings
            first = {c.name for c in components if c.name.startswith("text_encoder")}
            rest = {c.name for c in components} - first
            def weights(names) -> int:
                return sum(c.bytes for c in components if c.name in names)
            plan_stages = [("1 encode", weights(first) + activation_headroom(0, 0), ram_base + shard(first)),  # 1 GiB
                           ("2 denoise", weights(rest) + activations, ram_base + shard(rest))]
            vram, ram = (max(stage[i] for stage in plan_stages) for i in (1, 2))
            device_map, placement = "cuda", ""
            for c in components:
                c.placement = "cuda, stage 1 (then freed)" if c.name in first else "cuda, stage 2"
            if family not in STAGED_OUTPUTS:
                reasons.append(f"staged: not supported for {family} (its call takes no prompt embeddings the kit maps)")
            notes.append("staged: stage 1 loads only the text encoder(s) and encodes the prompt, then frees them; "
                         "stage 2 loads the rest with text_encoder=None and is called with the embeddings "
                         "(stage 1's VRAM: weights + 1 GiB, the kit's estimate)")
        else:
            if offload == "model":
                vram, placement = largest + activations, "cpu -> cuda while it runs"
                notes.append("model CPU offload: each component moves to the GPU while it runs; the whole model "
                             "waits in CPU RAM (a little slower per image)")
            elif offload == "group":
                vram = max(int((2 * stat[c.name].block_params + stat[c.name].outside_params)
                               * c.bytes / max(c.params, 1)) for c in components) + activations
                placement = "cpu, one block at a time"
                notes.append("group offloading (block level, CUDA streams): blocks stream to the GPU as needed; "
                             "the whole model waits in (pinned) CPU RAM; pass low_cpu_mem_usage=True if RAM is tight")
            else:
                vram = max(int(stat[c.name].leaf_params * c.bytes / max(c.params, 1)) for c in components) + activations
                placement = "cpu, one layer at a time"
                notes.append("sequential CPU offload: every layer moves to the GPU for each step: very slow "
                             "(minutes per image)")
            ram = ram_base + total
        budget = max(hardware.gpus)
        if vram > budget * GIB and not (balanced and offload == "none"):
            reasons.append(f"peak VRAM {vram / GIB:.1f} GiB (weights on the GPU + {activations / GIB:.1f} GiB of "
                           f"activations at {width}x{height}) is over the GPU's {budget:g} GiB")
    if ram > hardware.ram_gib * GIB:
        where = "the whole model waits in RAM" if on_gpu and offload != "none" else \
            "the weights live in RAM" if not on_gpu else "one shard at a time"
        reasons.append(f"peak RAM {ram / GIB:.1f} GiB ({where}) is over the machine's {hardware.ram_gib:g} GiB")
    if download is not None and download > hardware.disk_bytes:
        reasons.append(f"the download ({download / 1e9:.1f} GB) is bigger than the free disk "
                       f"({hardware.disk_bytes / 1e9:.0f} GB)")
    if placement:
        for c in components:
            c.placement = placement
    if variant:
        notes.append(f"downloads the repo's {variant} files: from_pretrained(..., variant={variant!r})")
    if model_id in STORAGE and STORAGE[model_id][2]:
        notes.append(f"{model_id} is gated: accept its licence at https://huggingface.co/{model_id} and set HF_TOKEN")
    if backends := sorted({c.backend for c in components if c.backend}):
        which = ", ".join(f"{c.name}: {c.quantization}" for c in components if c.quantization != "none")
        notes.append(f"quantized with {', '.join(backends)} through diffusers' PipelineQuantizationConfig ({which}); "
                     "install only that backend")
    return LoadPlan(model_id, family, hardware, components, dtype, quantization, offload, device_map, variant, height,
                    width, int(vram), activations, int(ram), download, not reasons, reasons, notes,
                    stages=plan_stages if on_gpu and offload == "staged" else [])


def plan_load(model_id: str, hardware="auto", *, dtype="auto", quantization: str = "auto", offload: str = "auto",
              device_map: str = "auto", height: int = 1024, width: int = 1024, alternatives: bool = True,
              staged: bool = False) -> LoadPlan:
    """The first candidate plan (`_candidates`) that fits, else the closest with `fits=False` and alternatives.
    `staged=True`: the caller runs a staged plan's two loads (notebook 02's staged section), so "auto" may pick it."""
    hw = resolve_hardware(hardware)
    rules.quantization("quantization", quantization)
    rules.choice("offload", offload, OFFLOADS)
    if offload == "staged" and not staged:
        raise InvalidParameterError("offload", offload, "this caller loads in one stage; a staged plan needs two "
                                    "loads", "Run notebook 02's staged section (plan_load(..., staged=True)), or "
                                    "pick another offload.")
    rules.choice("device_map", device_map, rules.DEVICE_MAPS)
    folder = config_folder(model_id)
    family = hub.read_model_index(str(folder))["_class_name"]
    stats = component_stats(folder)
    on_gpu = bool(hw.gpus) and device_map != "cpu"
    if device_map in ("cuda", "balanced") and not hw.gpus:
        raise InvalidParameterError("device_map", device_map, f"{hw.name} has no GPU", "Use 'auto' or 'cpu'.")
    chosen_dtype, dtype_notes, blocking = choose_dtype(family, dtype, hw, on_gpu)
    supported = family in STAGED_OUTPUTS or offload == "staged"  # asked for: its plan says why not
    plans = [_evaluate(model_id, family, stats, hw, chosen_dtype, q, o, b, on_gpu, height, width, dtype_notes,
                       blocking) for q, o, b in _candidates(quantization, offload, device_map, hw, on_gpu,
                                                           staged and supported)]
    plan = next((p for p in plans if p.fits), None) or min(plans, key=lambda p: _shortfall(p, device_map))
    if staged and not supported and on_gpu:
        plan.notes.append(f"staged: not supported for {family}: planned without it")
    if not plan.fits and alternatives:
        plan.alternatives = _alternatives(model_id, stats, hw, dtype, quantization, offload, device_map, height, width,
                                          staged)
    return plan


def what_fits(hardware="auto", height: int = 1024, width: int = 1024) -> dict[str, str]:
    """Each model whose configs ship with the kit -> the plan's one-line answer on `hardware` (notebook 01)."""
    hardware = resolve_hardware(hardware)
    return {model: plan_load(model, hardware, height=height, width=width, alternatives=False).summary()
            for model in STORAGE if model in architectures.available()}


def _shortfall(plan: LoadPlan, device_map: str) -> float:
    """How far a plan that does not fit is from fitting: its worst need/available ratio."""
    hw = plan.hardware
    ratios = [plan.ram_bytes / (hw.ram_gib * GIB), (plan.download_bytes or 0) / hw.disk_bytes]
    if hw.gpus:
        ratios.append(plan.vram_bytes / (max(hw.gpus) * GIB))
    if plan.device_map == "balanced" and device_map != "balanced":
        ratios.append(math.inf)  # its VRAM figure hides the components that overflow to the CPU
    return max(ratios)


def _alternatives(model_id, stats, hw, dtype, quantization, offload, device_map, height, width, staged) -> list[str]:
    found, asked = [], {"dtype": dtype, "quantization": quantization, "offload": offload, "device_map": device_map}

    def fits(label: str, model: str = model_id, hardware=hw, **choices) -> bool:
        plan = plan_load(model, hardware, **{"height": height, "width": width, "staged": staged, **choices},
                         alternatives=False)
        if plan.fits:
            found.append(f"{label}: {plan.summary()}")
        return plan.fits

    if tuple(asked.values()) != ("auto",) * 4:
        fits("let the plan choose (dtype, quantization, offload, device_map 'auto')")
    if not staged and hw.gpus and offload == "auto":
        fits("a staged load (notebook 02's staged section)", **{**asked, "offload": "auto"}, staged=True)
    if not hw.gpus or device_map == "cpu":
        fits("dtype='bfloat16' (80-125x slower than float32 on CPU)", **{**asked, "dtype": "bfloat16"})
    if height * width > 512 * 512:
        fits("a smaller image (height=width=512)", **asked, height=512, width=512)
    size = sum(s.params for s in stats)
    others = {other: sum(s.params for s in component_stats(architectures.folder(other)))
              for other in architectures.available() if other != model_id and other in STORAGE}
    for other in sorted(others, key=others.get, reverse=True):  # the largest (most capable) smaller family first
        if others[other] < size:
            gated = " (gated: accept its licence on the Hub, then set HF_TOKEN)" if STORAGE[other][2] else ""
            fits(f"a smaller model that fits here, model_id={other!r}{gated}", other)
    for name, profile in PROFILES.items():
        if profile != hw and profile.gpus and fits(f"hardware={name!r}", hardware=profile):
            break
    return found


# ---- The notebooks' gate: stop before any download when nothing fits; plan_only stops cleanly ----
PLAN_ONLY_KEEP = "plan_only"  # cells whose source mentions this still run after a plan_only stop
SKIPPED = "skipped: plan_only=True \u2014 this notebook stops after the plan (set plan_only=False to load and generate)"


def enforce(plan: LoadPlan, *, force: bool = False, plan_only: bool = False) -> None:
    """Call before any download. plan_only=True (or a staged plan): later cells not mentioning `plan_only` ("staged")
    print "skipped"; else a plan that does not fit raises PlanDoesNotFitError unless force=True."""
    _skip_later_cells(plan_only or plan.offload == "staged" and (plan.fits or force), staged=not plan_only)
    if plan_only:
        print("plan_only=True: stopping here; nothing was downloaded. Each later cell prints 'skipped' instead of "
              "running (set plan_only = False and rerun this cell to continue).")
        return
    if not plan.fits:
        if not force:
            raise PlanDoesNotFitError(plan)
        print("force=True: loading although the plan does not fit; expect an out-of-memory error or a full disk.")
    if plan.offload == "staged":
        print("A staged plan: the staged section runs; the one-stage sections print 'skipped'.")


# A staged plan: the cells that load in one stage print this; those mentioning "staged" run
SKIPPED_STAGED = "skipped: the plan is staged (encode, free, denoise): section 1b ran it; this one loads in one stage"
_SKIP = {"keep": PLAN_ONLY_KEEP, "why": SKIPPED}


def _skip_cell(lines: list[str]) -> list[str]:
    return lines if any(_SKIP["keep"] in line for line in lines) else [f"print({_SKIP['why']!r})\n"]


def _skip_later_cells(on: bool, staged: bool = False) -> None:
    """Install or remove the IPython input transformer that replaces later cells (no-op outside IPython)."""
    _SKIP.update(keep="staged" if staged else PLAN_ONLY_KEEP, why=SKIPPED_STAGED if staged else SKIPPED)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if (shell := get_ipython()) is None:
        return
    transformers = shell.input_transformers_post
    transformers[:] = [t for t in transformers if t is not _skip_cell]
    if on:
        transformers.append(_skip_cell)
