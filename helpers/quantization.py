"""Quantized loading through diffusers' own API: which backend, which components, which config, which packages.

A quantization choice is a name: "none", "int8", "int4", "nf4", or "gguf:<file or URL>". This module turns
it into what diffusers takes:

- `pipeline_config(...)` builds `diffusers.PipelineQuantizationConfig(quant_mapping={component: config})`
  with one backend config per component (bitsandbytes `BitsAndBytesConfig`, torchao
  `TorchAoConfig(Int8WeightOnlyConfig())`, quanto `QuantoConfig`). `quant_mapping` rather than
  `quant_backend=` + `quant_kwargs=`: with the pinned stack the latter raises "signatures ... don't match"
  for torchao.
- `gguf_component(...)` loads a GGUF denoiser file with the model class's `from_single_file` and
  `GGUFQuantizationConfig`; pass the result to `from_pretrained(..., <component>=model)`.

Only the denoiser (unet/transformer) and big text encoders (>= 1B parameters: T5-XXL, Qwen2.5-VL) are
quantized: they hold almost all the bytes, and the VAE is small and precision-sensitive.

Every backend quantizes only the weights of `nn.Linear` layers (diffusers' quanto and torchao quantizers
replace `nn.Linear` alone; bitsandbytes the same); convolutions, norms, biases and embeddings keep the
load dtype. `quantized_bytes(module, ...)` predicts a component's weight memory from that rule, which is
what the planner needs and what `make bench` measures.

quanto (int4 on any device) is deprecated in diffusers 0.42.1 (`QuantoConfig` warns a FutureWarning: removal
in diffusers 1.0.0, no replacement named); it is the agreed CPU int4 backend until torchao's int4 runs on CPU.

bitsandbytes (nf4, LLM.int8) needs a CUDA GPU: without one it is refused here, before any download,
with the CPU alternative. Nothing here imports a backend until a config is built, so planning works
where none is installed.
"""

from __future__ import annotations

import math

import torch

from .errors import InvalidParameterError, KitError

NAMES = ("none", "int8", "int4", "nf4")  # plus "gguf:<file or URL>"
BACKENDS = ("bitsandbytes", "torchao", "quanto", "gguf")

# Bytes per parameter of a quantized Linear weight, the data alone (the agreed planning table).
BYTES_PER_PARAM = {"int8": 1.0, "int4": 0.5, "nf4": 0.5}

# Block scales stored beside the data, per parameter (per-row scales are left to linear_weight_bytes):
# bitsandbytes nf4 keeps one float32 absmax per block of 64 (diffusers' default, no double quantization);
# quanto int4 a scale and a shift (2 bytes each at bf16) per group of up to 128.
BLOCK_SCALE_BYTES_PER_PARAM = {("nf4", "bitsandbytes"): 4 / 64}
GROUP_SIZE = {("int4", "quanto"): 128}

# GGUF block layouts (bytes per block / parameters per block) of the types diffusers 0.42.1 reads:
# ggml's own table (gguf.GGML_QUANT_SIZES), copied so planning needs no gguf install.
GGUF_BYTES_PER_PARAM = {
    "F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32, "Q5_0": 22 / 32, "Q5_1": 24 / 32, "Q4_0": 18 / 32,
    "Q4_1": 20 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256, "Q4_K": 144 / 256, "Q3_K": 110 / 256, "Q2_K": 84 / 256,
}

BIG_TEXT_ENCODER_PARAMS = 1_000_000_000
DENOISERS = ("transformer", "unet", "prior", "decoder")

# What each backend needs installed (requirements.txt pins the versions).
BACKEND_PACKAGES = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "quanto": "optimum-quanto",
                    "gguf": "gguf"}


class QuantizationUnavailableError(KitError, RuntimeError):
    """A quantization choice this machine cannot run (a GPU-only backend without a GPU, a missing package)."""


def parse(quantization: str) -> tuple[str, str | None]:
    """("int8", None), ("gguf", "<file or URL>"), ...; a clear error for anything else."""
    if isinstance(quantization, str) and quantization.startswith("gguf:"):
        source = quantization[len("gguf:"):].strip()
        if not source:
            raise InvalidParameterError("quantization", quantization, "gguf needs a file or URL after the colon",
                                        'e.g. "gguf:qwen-image-Q4_K_M.gguf" or "gguf:https://huggingface.co/.../x.gguf".')
        if not source.split("?")[0].lower().endswith(".gguf"):
            raise InvalidParameterError("quantization", quantization, "the gguf source must be a .gguf file or URL")
        return "gguf", source
    if quantization not in NAMES:
        raise InvalidParameterError("quantization", quantization, f"choose one of {', '.join(map(repr, NAMES))} "
                                    "or 'gguf:<file or URL>'")
    return quantization, None


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def resolve_backend(quantization: str, backend: str = "auto", device: str | None = None) -> str | None:
    """The backend that runs `quantization` on `device` ("cuda"/"cpu"; detected when None). None for "none".

    auto: on CUDA, bitsandbytes for nf4/int8 and quanto for int4; on CPU, torchao for int8 and quanto for int4.
    nf4 exists only in bitsandbytes, so it has no CPU backend: that is refused here, with the alternative.
    """
    name, _ = parse(quantization)
    if name == "none":
        return None
    if name == "gguf":
        return "gguf"
    cuda = _has_cuda() if device is None else str(device).startswith("cuda")
    if backend == "auto":
        backend = {"nf4": "bitsandbytes", "int8": "bitsandbytes" if cuda else "torchao", "int4": "quanto"}[name]
    if backend not in BACKENDS[:3]:
        raise InvalidParameterError("backend", backend, f"choose 'auto' or one of {', '.join(BACKENDS[:3])}")
    supported = {"bitsandbytes": ("nf4", "int8"), "torchao": ("int8",), "quanto": ("int8", "int4")}[backend]
    if name not in supported:
        raise InvalidParameterError("quantization", quantization, f"the {backend} backend offers "
                                    f"{' and '.join(supported)}", "Use backend='auto'.")
    if backend == "bitsandbytes" and not cuda:
        alternative = "'int8' (torchao) or 'int4' (quanto)" if name == "nf4" else "'int8' with torchao"
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} uses bitsandbytes, which needs a CUDA GPU and none is available here "
            f"(bitsandbytes itself would stop the load with 'No GPU found'). On CPU use quantization={alternative}, "
            "or run on a GPU runtime (Colab: Runtime > Change runtime type > T4 GPU)."
        )
    return backend


def required_packages(quantization: str, backend: str = "auto", device: str | None = None) -> list[str]:
    """Pinned requirement lines ("torchao==0.18.0") for what this choice needs; [] for "none".

    For the hosted install (Colab): install only what the plan uses.
    """
    chosen = resolve_backend(quantization, backend, device)
    if chosen is None:
        return []
    from .rules import BACKENDS

    spec = BACKENDS[chosen]
    return [f"{spec['package']}=={spec['pin']}"]


def missing_packages(quantization: str, backend: str = "auto", device: str | None = None) -> list[str]:
    """The pinned lines of what this choice needs and is not installed."""
    from importlib import metadata

    missing = []
    for requirement in required_packages(quantization, backend, device):
        try:
            metadata.version(requirement.split("==")[0])
        except metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def check_installed(quantization: str, backend: str = "auto", device: str | None = None) -> None:
    """Raise before loading when the backend package is missing, naming the pip command."""
    missing = missing_packages(quantization, backend, device)
    if missing:
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} needs {', '.join(missing)}, which is not installed. "
            f"Fix: pip install {' '.join(repr(m) for m in missing)}, then restart the kernel."
        )


def default_components(params: dict[str, int]) -> list[str]:
    """Which components to quantize, from {component: parameter count}: the denoiser and big text encoders."""
    return [name for name, count in params.items()
            if name in DENOISERS or (name.startswith("text_encoder") and count >= BIG_TEXT_ENCODER_PARAMS)]


def _library(component: str) -> str:
    return "transformers" if component.startswith("text_encoder") else "diffusers"


def backend_config(quantization: str, backend: str, library: str = "diffusers", dtype: torch.dtype = torch.bfloat16):
    """One component's quantization config, from diffusers (denoisers) or transformers (text encoders)."""
    import diffusers
    import transformers

    module = diffusers if library == "diffusers" else transformers
    if backend == "bitsandbytes":
        if quantization == "nf4":
            return module.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=dtype)
        return module.BitsAndBytesConfig(load_in_8bit=True)
    if backend == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return module.TorchAoConfig(Int8WeightOnlyConfig())
    if backend == "quanto":
        return module.QuantoConfig(weights_dtype=quantization) if library == "diffusers" else \
            module.QuantoConfig(weights=quantization)
    raise InvalidParameterError("backend", backend, f"choose one of {', '.join(BACKENDS[:3])}")


def pipeline_config(quantization: str, components: list[str], backend: str = "auto", device: str | None = None,
                    dtype: torch.dtype = torch.bfloat16):
    """`PipelineQuantizationConfig(quant_mapping=...)` for `components`, or None for "none".

    The result goes to `DiffusionPipeline.from_pretrained(..., quantization_config=config)`.
    GGUF is not a pipeline config: use `gguf_component`.
    """
    name, _ = parse(quantization)
    if name == "none":
        return None
    if name == "gguf":
        raise InvalidParameterError("quantization", quantization, "GGUF replaces one component file, it is not a "
                                    "pipeline config", "Use quantization.gguf_component(...) and pass the model "
                                    "to from_pretrained.")
    if not components:
        raise InvalidParameterError("components", components, "name at least one component to quantize")
    chosen = resolve_backend(quantization, backend, device)
    check_installed(quantization, chosen, device)
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping={
        component: backend_config(name, chosen, _library(component), dtype) for component in components})


def gguf_component(model_id: str, quantization: str, dtype: torch.dtype = torch.bfloat16, **hub_kwargs) -> dict:
    """{denoiser name: model} loaded from the GGUF file in `quantization` ("gguf:<file or URL>").

    Wraps `<DenoiserClass>.from_single_file(source, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
    config=model_id, subfolder=<name>)`: the file holds the weights, the pipeline (`model_id`) the config.
    Use it as `DiffusionPipeline.from_pretrained(model_id, dtype=dtype, **gguf_component(...))`.
    """
    import json
    from pathlib import Path

    import diffusers
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    _, source = parse(quantization)
    check_installed(quantization)
    local = Path(source).expanduser()
    if not source.startswith(("http://", "https://")) and not local.is_file():
        raise FileNotFoundError(f"quantization={quantization!r}: no GGUF file at {str(local)!r}. Give an existing "
                                ".gguf file or a https://huggingface.co/<repo>/blob/main/<file>.gguf URL.")
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        index = json.loads((folder / "model_index.json").read_text())
    else:
        from huggingface_hub import hf_hub_download

        index = json.loads(Path(hf_hub_download(model_id, "model_index.json", **hub_kwargs)).read_text())
    name = next((n for n in DENOISERS if isinstance(index.get(n), list)), None)
    if name is None:
        raise InvalidParameterError("quantization", quantization, f"{model_id!r} has no unet or transformer to "
                                    "replace with a GGUF file")
    class_name = index[name][1]
    if class_name not in SINGLE_FILE_LOADABLE_CLASSES:
        raise InvalidParameterError("quantization", quantization, f"diffusers cannot load a {class_name} from a "
                                    "single file", "Use 'int8' or 'int4' instead.")
    model_class = getattr(diffusers, class_name)
    model = model_class.from_single_file(
        str(local) if local.is_file() else source,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=str(folder) if folder.is_dir() else model_id, subfolder=name, dtype=dtype, **hub_kwargs,
    )
    return {name: model}


def weight_bytes_per_param(quantization: str, backend: str) -> float:
    """Bytes a quantized Linear weight takes per parameter, block scales included: the planner's figure."""
    name, _ = parse(quantization)
    group = GROUP_SIZE.get((name, backend))
    group_scales = 2 * 2 / group if group else 0.0  # a scale and a shift per group, 2 bytes each
    return BYTES_PER_PARAM[name] + BLOCK_SCALE_BYTES_PER_PARAM.get((name, backend), 0.0) + group_scales


def _quanto_group_size(in_features: int) -> int | None:
    """optimum-quanto's int4 group size for a Linear (QModuleMixin.__init__): 128, lowered by 32 until it divides."""
    group = 128
    if in_features <= group:
        return None
    while in_features % group and group > 32:
        group -= 32
    return group if in_features % group == 0 else None


def linear_weight_bytes(rows: int, cols: int, quantization: str, backend: str, dtype_bytes: int = 2) -> int:
    """Bytes one quantized `nn.Linear(cols, rows)` weight stores, with its scales, as each backend lays it out.

    - torchao `Int8WeightOnlyConfig` (Int8Tensor): int8 data, a float32 scale and an int8 zero point per row;
    - quanto int8: int8 data, a scale per row (load dtype), and the module's input/output scale buffers;
    - quanto int4: packed 4-bit data, a scale and a shift per group (per row without a group size), buffers;
    - bitsandbytes nf4: packed 4-bit data and a float32 absmax per block of 64; LLM.int8: a float32 scale per row.
    """
    name, _ = parse(quantization)
    numel = rows * cols
    if backend == "torchao":
        return numel + rows * 5
    if backend == "quanto" and name == "int8":
        return numel + rows * dtype_bytes + 2 * dtype_bytes
    if backend == "quanto" and name == "int4":
        group = _quanto_group_size(cols)
        groups = numel // group if group else rows
        return math.ceil(numel / 2) + groups * 2 * dtype_bytes + 2 * dtype_bytes
    if backend == "bitsandbytes" and name == "nf4":
        return math.ceil(numel / 2) + math.ceil(numel / 64) * 4
    if backend == "bitsandbytes" and name == "int8":
        return numel + rows * 4
    return math.ceil(numel * weight_bytes_per_param(quantization, backend))


def quantized_bytes(module: torch.nn.Module, quantization: str, backend: str | None,
                    dtype: torch.dtype = torch.bfloat16) -> int:
    """Predicted weight bytes of `module` (built on the meta device is enough) after quantized loading.

    Linear weights take `linear_weight_bytes` (data and scales); everything else stays at `dtype`.
    """
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    name, _ = parse(quantization)
    total = 0
    counted: set[int] = set()
    for submodule in module.modules():
        for param_name, param in submodule.named_parameters(recurse=False):
            if id(param) in counted:
                continue
            counted.add(id(param))
            if name != "none" and backend and isinstance(submodule, torch.nn.Linear) and param_name == "weight":
                total += linear_weight_bytes(param.shape[0], param.shape[1], name, backend, dtype_bytes)
            else:
                total += param.numel() * dtype_bytes
    return total


def _tensor_bytes(tensor: torch.Tensor, seen: set) -> int:
    """Bytes a tensor stores, unwrapping quantized subclasses (`__tensor_flatten__`) into their inner tensors."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(data) not in (torch.Tensor, torch.nn.Parameter) and hasattr(data, "__tensor_flatten__"):
        return _tensor_bytes(data, seen)
    storage = data.untyped_storage()
    key = (storage.data_ptr(), storage.nbytes())
    if key in seen or data.device.type == "meta":
        return 0 if key in seen else data.numel() * data.element_size()
    seen.add(key)
    return storage.nbytes()


def stored_bytes(module: torch.nn.Module) -> int:
    """Measured bytes of every parameter and buffer `module` holds (shared storage once): the weight memory."""
    seen: set = set()
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(_tensor_bytes(t, seen) for t in tensors.values())



def plan_config(plan, device: str, dtype: torch.dtype):
    """A load plan's quantization (`helpers.planning.LoadPlan`) as the `quantization_config=` for
    `from_pretrained`: diffusers' `PipelineQuantizationConfig`, or None when nothing is quantized (or GGUF)."""
    quantized = plan.quantized()
    if not quantized or plan.quantization.startswith("gguf:"):
        return None
    return pipeline_config(plan.quantization, list(quantized), device=device, dtype=dtype)


def plan_components(plan, model_id: str, dtype: torch.dtype) -> dict:
    """The components a plan loads itself before `from_pretrained`: the GGUF denoiser, else nothing."""
    if not plan.quantization.startswith("gguf:"):
        return {}
    return gguf_component(model_id, plan.quantization, dtype)
