"""diffusers' quantization configs for a load plan, checked before loading; a backend is imported only with its
config, never installed. Built with quant_mapping=, as quant_backend= + quant_kwargs= fail for torchao (pinned)."""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidParameterError, QuantizationUnavailableError
from .rules import BACKENDS, DENOISERS, backend_for, parse_quantization

# quanto is deprecated in diffusers 0.42.1 (removal in 1.0.0): the CPU int4 backend until torchao's int4 runs on CPU.
SUPPORTED = {"bitsandbytes": ("nf4", "int8"), "torchao": ("int8",), "quanto": ("int8", "int4")}


def resolve_backend(quantization: str, backend: str = "auto", device: str | None = None) -> str | None:
    """The backend that runs `quantization` on `device` ("cuda"/"cpu"; detected when None), None for "none"
    (`rules.backend_for` by default); bitsandbytes without CUDA is refused here, with the alternative."""
    name, _ = parse_quantization(quantization)
    if name == "auto":
        raise InvalidParameterError("quantization", quantization, "a config needs a decided quantization",
                                    "Use the load plan's (planning.plan_load decides 'auto').")
    if name in ("none", "gguf"):
        return None if name == "none" else "gguf"
    import torch
    cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if backend == "auto":
        backend = backend_for(name, cuda)
    if backend not in SUPPORTED:
        raise InvalidParameterError("backend", backend, f"choose 'auto' or one of {', '.join(SUPPORTED)}")
    if name not in SUPPORTED[backend]:
        raise InvalidParameterError("quantization", quantization, f"the {backend} backend offers "
                                    f"{' and '.join(SUPPORTED[backend])}", "Use backend='auto'.")
    if backend == "bitsandbytes" and not cuda:
        alternative = "'int8' (torchao) or 'int4' (quanto)" if name == "nf4" else "'int8' with torchao"
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} uses bitsandbytes, which needs a CUDA GPU and none is available here "
            f"(bitsandbytes itself would stop the load with 'No GPU found'). On CPU use quantization={alternative}, "
            "or run on a GPU runtime (Colab: Runtime > Change runtime type > T4 GPU)."
        )
    return backend


def check_installed(quantization: str, backend: str = "auto", device: str | None = None) -> None:
    """Raise before loading when the backend package is missing or older than the pinned diffusers accepts."""
    from importlib import metadata

    from packaging.version import Version
    chosen = resolve_backend(quantization, backend, device)
    if chosen is None:
        return
    package, minimum = BACKENDS[chosen]["package"], BACKENDS[chosen]["min"]
    try:
        found = metadata.version(package)
    except metadata.PackageNotFoundError:
        found = None
    if found is None or Version(found) < Version(minimum):
        needs = f"{package}, which is not installed" if found is None else \
            f"{package} >= {minimum}, but {found} is installed (too old for the pinned diffusers)"
        raise QuantizationUnavailableError(
            f"quantization={quantization!r} needs {needs}. Fix: pip install '{package}=={BACKENDS[chosen]['pin']}', "
            "then restart the kernel (diffusers looks for backends when it is imported).")


def backend_config(quantization: str, backend: str, library: str = "diffusers", dtype=None):
    """One component's quantization config, from diffusers (denoisers) or transformers (text encoders)."""
    import diffusers
    import torch
    import transformers
    module = diffusers if library == "diffusers" else transformers
    if backend == "bitsandbytes":
        if quantization == "nf4":
            return module.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=dtype or torch.bfloat16)
        return module.BitsAndBytesConfig(load_in_8bit=True)
    if backend == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return module.TorchAoConfig(Int8WeightOnlyConfig())
    if backend == "quanto":
        return module.QuantoConfig(weights_dtype=quantization) if library == "diffusers" else \
            module.QuantoConfig(weights=quantization)
    raise InvalidParameterError("backend", backend, f"choose one of {', '.join(SUPPORTED)}")


def pipeline_config(quantization: str, components: list[str], backend: str = "auto", device: str | None = None,
                    dtype=None):
    """`PipelineQuantizationConfig(quant_mapping=...)` for `components` (from_pretrained's quantization_config=),
    or None for "none". GGUF is not a pipeline config: use `gguf_component`."""
    name, _ = parse_quantization(quantization)
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
    return PipelineQuantizationConfig(quant_mapping={component: backend_config(
        name, chosen, "transformers" if component.startswith("text_encoder") else "diffusers", dtype)
        for component in components})


def gguf_component(model_id: str, quantization: str, dtype=None, **hub_kwargs) -> dict:
    """{denoiser name: model} from the GGUF file in `quantization` (`from_single_file` with the pipeline's config):
    use it as `DiffusionPipeline.from_pretrained(model_id, dtype=dtype, **gguf_component(...))`."""
    import torch

    from . import hub
    dtype = dtype or torch.bfloat16
    _, source = parse_quantization(quantization)
    check_installed(quantization)
    local = Path(source).expanduser()
    if not source.startswith(("http://", "https://")) and not local.is_file():
        raise FileNotFoundError(f"quantization={quantization!r}: no GGUF file at {str(local)!r}. Give an existing "
                                ".gguf file or a https://huggingface.co/<repo>/blob/main/<file>.gguf URL.")
    index = hub.read_model_index(model_id, revision=hub_kwargs.get("revision"))
    name = next((n for n in DENOISERS if isinstance(index.get(n), list)), None)
    if name is None:
        raise InvalidParameterError("quantization", quantization, f"{model_id!r} has no unet or transformer to "
                                    "replace with a GGUF file")
    import diffusers
    from diffusers import GGUFQuantizationConfig
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
    class_name = index[name][1]
    if class_name not in SINGLE_FILE_LOADABLE_CLASSES:
        raise InvalidParameterError("quantization", quantization, f"diffusers cannot load a {class_name} from a "
                                    "single file", "Use 'int8' or 'int4' instead.")
    folder = Path(model_id).expanduser()
    model = getattr(diffusers, class_name).from_single_file(
        str(local) if local.is_file() else source,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=str(folder) if folder.is_dir() else model_id, subfolder=name, dtype=dtype, **hub_kwargs,
    )
    return {name: model}


def plan_config(plan, device: str, dtype):
    """A `LoadPlan`'s `quantization_config=` for from_pretrained, or None when nothing is quantized (or GGUF)."""
    quantized = plan.quantized()
    if not quantized or plan.quantization.startswith("gguf:"):
        return None
    return pipeline_config(plan.quantization, list(quantized), device=device, dtype=dtype)


def plan_components(plan, model_id: str, dtype) -> dict:
    """The components a plan loads itself before `from_pretrained`: the GGUF denoiser, else nothing."""
    if not plan.quantization.startswith("gguf:"):
        return {}
    return gguf_component(model_id, plan.quantization, dtype)
