"""Thin guards around `DiffusionPipeline.from_pretrained` and `from_pipe`, and the out-of-memory guard: each checks
what diffusers would get wrong silently or with a deep traceback, then makes the real diffusers call."""

from __future__ import annotations

import gc
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from . import env
from .diffusers_logs import without_empty_fp32_notes
from .errors import InvalidParameterError, KitError, KitOutOfMemoryError
from .hub import fetch_file, hub_access, hub_offline, read_model_index, resolve_model_source
from .memory import module_dtypes, quantized_components
from .rules import DEVICE_MAPS, DTYPE_ALIASES

DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_ALIASES.items()}
DTYPE_CHOICES = "'float32', 'float16', 'bfloat16' (or a dict of those per component with a 'default' key)"
DEVICE_MAP_CHOICES = (*DEVICE_MAPS, None)
TASKS = {"text2image": "AUTO_TEXT2IMAGE_PIPELINES_MAPPING", "image2image": "AUTO_IMAGE2IMAGE_PIPELINES_MAPPING",
         "inpaint": "AUTO_INPAINT_PIPELINES_MAPPING"}


def resolve_dtype(dtype):
    """A dtype name (or a per-component dict of names, with a "default" key) -> torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, dict):
        if "default" not in dtype:
            raise InvalidParameterError("dtype", dtype, 'a per-component dict needs a "default" key', "Without it "
                                        'diffusers loads every unlisted component as float32. Add "default": '
                                        '"bfloat16" (say).')
        return {name: resolve_dtype(value) for name, value in dtype.items()}
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    if dtype == "auto":
        raise InvalidParameterError("dtype", dtype, "'auto' is decided by the load plan, not here",
                                    "Pass load_plan.resolved_dtype (planning.plan_load(model_id, ...)).")
    raise InvalidParameterError("dtype", dtype, f"choose one of 'auto', {DTYPE_CHOICES}")


def resolve_device_map(device_map, gpu_count: int | None = None, accelerator: str = "cuda") -> str | None:
    """The kit's device_map as one diffusers accepts ("balanced", the accelerator, "cpu"), or None (load on CPU)."""
    if device_map is None:
        return None
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    if not isinstance(device_map, str) or device_map not in DEVICE_MAP_CHOICES:
        hint = ('To use one particular GPU, load with device_map="cuda" after setting CUDA_VISIBLE_DEVICES.'
                if isinstance(device_map, str) and device_map.startswith("cuda:") else "Per-module dicts are for "
                "models (AutoModel.from_pretrained), not pipelines." if isinstance(device_map, dict) else "")
        allowed = f"a pipeline takes one of {', '.join(repr(c) for c in DEVICE_MAP_CHOICES if c)}"
        raise InvalidParameterError("device_map", device_map, allowed, hint)
    if device_map == "auto":
        return accelerator if gpu_count else "mps" if env.recommended_device() == "mps" else None
    if device_map in ("cuda", "balanced") and gpu_count == 0:
        raise InvalidParameterError("device_map", device_map, "it needs a CUDA GPU and none is visible",
                                    'Use device_map="auto" (loads on CPU here) or "cpu"; in Colab pick a GPU runtime.')
    return device_map


def check_dtype_mix(pipeline_class_name: str, dtypes: dict[str, torch.dtype]) -> None:
    """Refuse per-component dtype mixes that fail at inference (SD/SDXL; Qwen-Image takes a VAE of another dtype)."""
    if len(set(dtypes.values())) <= 1 or (pipeline_class_name.startswith("QwenImage")
                                           and len({d for n, d in dtypes.items() if n != "vae"}) == 1):
        return
    listing = ", ".join(f"{name}={str(dtype).removeprefix('torch.')}" for name, dtype in sorted(dtypes.items()))
    raise InvalidParameterError("dtype", listing, f"{pipeline_class_name} components must share one dtype",
                                "Mixed dtypes fail at inference on SD/SDXL-style pipelines; only Qwen-Image accepts a "
                                'VAE of another dtype (e.g. {"default": "bfloat16", "vae": "float32"}).')


def _refuse_torch_dtype(kwargs: dict) -> None:
    if "torch_dtype" in kwargs:
        raise InvalidParameterError("torch_dtype", kwargs["torch_dtype"],
                                    "torch_dtype= is deprecated in diffusers 0.42", "Pass dtype= instead.")


def load_pipeline(model_id: str, pipeline_class=DiffusionPipeline, *, dtype="auto", device_map="auto",
                  revision: str | None = None, **kwargs):
    """`pipeline_class.from_pretrained(model_id, dtype=..., device_map=...)` with the kit's guards; dtype="auto" takes
    the load plan's policy. A gated repo or out of memory raises GatedModelError / KitOutOfMemoryError with the fix."""
    _refuse_torch_dtype(kwargs)
    source = resolve_model_source(model_id, revision)
    resolved_map = resolve_device_map(device_map)
    if dtype == "auto":  # the plan's dtype policy for this family and machine (never float16 for Qwen-Image, FLUX)
        from . import planning
        hardware = planning.resolve_hardware("auto")
        family = read_model_index(source, revision).get("_class_name", "")
        dtype = planning.choose_dtype(family, "auto", hardware, bool(hardware.gpus) and resolved_map != "cpu")[0]
    resolved_dtype = resolve_dtype(dtype)
    for name, component in ((n, v) for n, v in kwargs.items() if isinstance(v, torch.nn.Module)):
        check_component(source, name, component, revision)
    if isinstance(resolved_dtype, dict):
        index = read_model_index(source, revision)
        unweighted = ("Scheduler", "Tokenizer", "Processor", "FeatureExtractor")
        weighted = [n for n, spec in index.items() if not n.startswith("_") and isinstance(spec, list)
                    and spec[1] is not None and not any(w in spec[1] for w in unweighted)]
        check_dtype_mix(index["_class_name"], {n: resolved_dtype.get(n, resolved_dtype["default"]) for n in weighted})
    if not Path(source).is_dir() and hub_offline():
        kwargs.setdefault("local_files_only", True)
    if revision is not None:
        kwargs["revision"] = revision
    with hub_access(model_id), out_of_memory():  # 401/403 and OOM: say what to do next
        pipe = pipeline_class.from_pretrained(source, dtype=resolved_dtype, device_map=resolved_map, **kwargs)
    pipe.set_progress_bar_config(disable=env.quiet_mode())
    return pipe


def from_pipe_dtype(pipe, dtype=None):
    """The dtype for `SomePipeline.from_pipe(pipe, dtype=...)` (it casts every shared module): `dtype`, else pipe's."""
    if not isinstance(pipe, DiffusionPipeline):
        raise InvalidParameterError("pipe", type(pipe).__name__, "from_pipe needs a loaded diffusers pipeline",
                                    "Load one with from_pretrained.")
    if quantized := quantized_components(pipe):
        raise InvalidParameterError(
            "pipe", type(pipe).__name__, f"its {', '.join(quantized)} is quantized, and from_pipe casts every shared "
            "module with .to(dtype), which diffusers refuses for quantized models", "Load the other task's class with "
            "from_pretrained(..., quantization_config=...) instead (a second copy of the weights), or plan without "
            "quantization on a bigger machine.")
    if dtype not in (None, "auto"):  # "auto": keep the source's (it was loaded with the plan's dtype)
        return resolve_dtype(dtype)
    distinct = set((current := module_dtypes(pipe)).values())
    if len(distinct) > 1:
        listing = ", ".join(f"{n}={str(d).removeprefix('torch.')}" for n, d in current.items())
        raise InvalidParameterError("dtype", None, f"the source pipeline has mixed dtypes ({listing})", "diffusers "
                                    "casts every shared module (the source's too) to one dtype: pass dtype= to choose.")
    return distinct.pop() if distinct else torch.float32


def from_pipe(pipeline_class, pipe, dtype=None, **kwargs):
    """`pipeline_class.from_pipe(pipe, dtype=from_pipe_dtype(pipe))`: keeps the source's dtype by default."""
    dtype = from_pipe_dtype(pipe, dtype)
    _refuse_torch_dtype(kwargs)
    if "device_map" in kwargs:
        raise InvalidParameterError("device_map", kwargs["device_map"], "from_pipe does not take a device_map",
                                    "The new pipeline shares the source's modules, and so their placement.")
    # diffusers logs "modules ... should be kept in float32: []" even when the dtype does not change: only that goes
    with without_empty_fp32_notes() if set(module_dtypes(pipe).values()) == {dtype} else nullcontext():
        new_pipe = pipeline_class.from_pipe(pipe, dtype=dtype, **kwargs)
    new_pipe.set_progress_bar_config(disable=env.quiet_mode())
    return new_pipe


def task_variant(pipe, task: str):
    """The pipeline class of `pipe`'s family for `task` ("image2image", "inpaint"), or None (AutoPipelineFor*'s map)."""
    if task not in TASKS:
        raise InvalidParameterError("task", task, f"choose one of {', '.join(TASKS)}")
    from diffusers.pipelines import auto_pipeline  # imports every pipeline class: only when asked
    return auto_pipeline._get_task_class(getattr(auto_pipeline, TASKS[task]), type(pipe).__name__,
                                         throw_error_if_not_exist=False)


# Config values that must agree for a component to fit the others: latent shape and scaling, conditioning widths.
INTERFACE_KEYS = ("latent_channels", "z_dim", "scaling_factor", "in_channels", "out_channels", "cross_attention_dim",
                  "joint_attention_dim", "hidden_size", "projection_dim")


def _config_dict(component) -> dict:
    config = getattr(component, "config", {})
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def component_spec(source: str, name: str, revision: str | None = None) -> tuple[str, dict]:
    """(class name, config) of component `name` as the pipeline at `source` ships it."""
    index = read_model_index(source, revision)
    if name not in index or not isinstance(index[name], list):
        raise InvalidParameterError(name, "(a component)", f"{index['_class_name']} has no component {name!r}",
                                    f"Its components are: {', '.join(n for n in index if not n.startswith('_'))}.")
    config_path = fetch_file(source, f"{name}/config.json", revision)
    return index[name][1], json.loads(config_path.read_text()) if config_path.is_file() else {}


def check_component(spec, name: str, component, revision: str | None = None) -> None:
    """Refuse a component of the wrong class or shape before diffusers fails deep inside a call. `spec`: the pipeline
    source it is for (its `name` as `component_spec` reads it), or (class name, config)."""
    expected_class, expected_config = spec if isinstance(spec, tuple) else component_spec(spec, name, revision)
    actual_class = type(component).__name__
    if expected_class not in {cls.__name__ for cls in type(component).__mro__}:
        raise InvalidParameterError(name, actual_class, f"this pipeline's {name} must be of class {expected_class}",
                                    f"Load a {name} made for this model family ({expected_class}).")
    config = _config_dict(component)
    if differing := [f"{key} {config[key]} (expected {expected_config[key]})" for key in INTERFACE_KEYS
                     if key in config and key in expected_config and config[key] != expected_config[key]]:
        raise InvalidParameterError(name, actual_class, f"its config does not match this pipeline's {name}: "
                                    f"{', '.join(differing)}", f"It was made for another model family; use a {name} "
                                    "trained for this one.")


def check_swap(pipe, name: str, component) -> None:
    """Check `component` against the one it replaces in a loaded pipeline (same rules as at load time)."""
    if name not in pipe.components or pipe.components[name] is None:
        raise InvalidParameterError(name, type(component).__name__, f"{type(pipe).__name__} has no {name} to replace")
    check_component((type(pipe.components[name]).__name__, _config_dict(pipe.components[name])), name, component)


def load_component(model_id: str, subfolder: str = "", *, dtype="auto", revision: str | None = None, **kwargs):
    """`diffusers.AutoModel.from_pretrained` with the kit's path, offline and dtype checks ("auto": this machine's)."""
    from diffusers import AutoModel
    _refuse_torch_dtype(kwargs)
    source = resolve_model_source(model_id, revision, subfolder)
    if not Path(source).is_dir() and hub_offline():
        kwargs.setdefault("local_files_only", True)
    if subfolder:
        kwargs["subfolder"] = subfolder
    if revision is not None:
        kwargs["revision"] = revision
    if dtype == "auto":  # a single component has no family rule: this machine's compute dtype
        dtype = env.recommended_dtype(resolve_device_map("auto") or "cpu")
    return AutoModel.from_pretrained(str(source), dtype=resolve_dtype(dtype), **kwargs)  # a Path: TypeError (0.42.1)


LOADING_OPTIONS = ("device_map", "dtype", "torch_dtype", "max_memory", "low_cpu_mem_usage", "variant", "revision",
                   "use_safetensors", "local_files_only")


def check_constructor_arguments(pipeline_class, **kwargs) -> None:
    """Refuse loading options given to a pipeline's constructor (`MyPipeline(unet=..., device_map="cuda")`)."""
    import inspect
    accepted = inspect.signature(pipeline_class.__init__).parameters
    for name in kwargs:
        if name in LOADING_OPTIONS and name not in accepted:
            raise InvalidParameterError(name, kwargs[name], f"{pipeline_class.__name__}(...) takes loaded components, "
                                        "not loading options", "Build the pipeline from its components, then move and "
                                        "cast it: pipe = pipe.to('cuda', torch.float16). (device_map= and dtype= go to "
                                        "from_pretrained.)")


def plan_kwargs(load_plan, source: str) -> dict:
    """`from_pretrained` kwargs of a LoadPlan: dtype, device_map, variant, quantization_config or GGUF models."""
    from . import quantization
    dtype = load_plan.resolved_dtype
    kwargs = {"dtype": dtype, "device_map": load_plan.device_map, "variant": load_plan.variant}
    if (config := quantization.plan_config(load_plan, load_plan.device, dtype)) is not None:
        kwargs["quantization_config"] = config
    kwargs.update(quantization.plan_components(load_plan, source, dtype))
    return kwargs


def stage_kwargs(load_plan, source: str, stage: int) -> dict:
    """`from_pretrained` kwargs of a staged plan's stage: 1, the text encoder(s) and tokenizers alone (every other
    weighted component None); 2, the rest: text_encoder_2/3 None, text_encoder=None left for the cell to write."""
    encoders = {c.name for c in load_plan.components if c.name.startswith("text_encoder")}
    dropped = {c.name for c in load_plan.components} - encoders if stage == 1 else encoders - {"text_encoder"}
    return {**plan_kwargs(load_plan, source), **dict.fromkeys(sorted(dropped))}


def apply_offload(pipe, load_plan) -> str:
    """Apply the plan's offload after the load (it needs a GPU); returns what was done, to print."""
    if load_plan.offload in ("none", "staged"):
        return f"offload: {load_plan.offload} (the plan keeps every component where it loaded)"
    if not torch.cuda.is_available():
        return f"offload: the plan's {load_plan.offload!r} offload needs a CUDA GPU; none here, so not applied"
    if load_plan.offload == "model":
        pipe.enable_model_cpu_offload()
    elif load_plan.offload == "group":
        pipe.enable_group_offload(torch.device("cuda"), offload_type="block_level", num_blocks_per_group=1,
                                  use_stream=True)
    else:
        pipe.enable_sequential_cpu_offload()
    return f"offload: {load_plan.offload} -> {load_plan.offload_call}"


# --- out of memory -------------------------------------------------------------------------------------------------
LOAD_OPTIONS = ["more offload: offload='model' (or 'group'/'sequential' when one component does not fit)",
                "quantization: quantization='int8' (half of bf16), or 'nf4'/'int4' on a GPU (a quarter)",
                "a smaller model family that fits (see the plan's alternatives)"]


@contextmanager
def out_of_memory():
    """Re-raise an out-of-memory error during a load (CUDA's, the CPU allocator's, MemoryError) as a
    KitOutOfMemoryError listing what to try next (LOAD_OPTIONS, in order)."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError, MemoryError) as error:
        text = str(error).strip()  # the CPU allocator's RuntimeError says "can't allocate memory"
        if isinstance(error, KitError) or not (isinstance(error, torch.OutOfMemoryError | MemoryError)
                                               or "can't allocate memory" in text or "not enough memory" in text):
            raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise KitOutOfMemoryError(
            f"Out of memory during load ({(text or 'out of memory').splitlines()[0]}). Try next, in this order:\n"
            + "\n".join(f"  {i}. {choice}" for i, choice in enumerate(LOAD_OPTIONS, 1))
            + "\nRestart the kernel first if memory stays taken (del pipe; gc.collect() frees most of it)."
        ) from None
