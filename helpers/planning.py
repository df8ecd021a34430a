"""Will it fit? Component sizes from configs alone, and the device plan of device_map="balanced".

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import architectures, rules
from .errors import LocalPathNotFoundError
from .loading import resolve_dtype

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
