"""Every parameter rule of the kit, defined once: each raises `InvalidParameterError` (name, value, rule, fix).
No torch, diffusers or huggingface_hub here, so a notebook can check its parameters before the stack is installed."""

from __future__ import annotations

import ast
import math
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from . import KIT_ROOT
from .errors import InvalidParameterError, LocalPathNotFoundError

# The one list of dtype and device_map names; helpers.loading maps them onto torch and diffusers.
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                 "bfloat16": "bfloat16", "bf16": "bfloat16"}
DTYPE_NAMES = ("auto", *DTYPE_ALIASES)
DEVICE_MAPS = ("auto", "cuda", "balanced", "cpu")
OFFLOADS = ("auto", "none", "staged", "model", "group", "sequential")  # staged: plan_load(..., staged=True) only
TRUE_VALUES = {"1", "true", "yes", "on"}  # huggingface_hub's _is_true, diffusers' ENV_VARS_TRUE_VALUES

# Quantization names ("gguf:<file or URL>" too): only the denoiser and big text encoders are quantized.
NAMES = ("none", "int8", "int4", "nf4")
DENOISERS = ("transformer", "unet", "prior", "decoder")
BIG_TEXT_ENCODER_PARAMS = 1_000_000_000

# The default backend of each quantization (on a CUDA GPU, on CPU). nf4 exists only in bitsandbytes.
AUTO_BACKENDS = {"nf4": ("bitsandbytes", "bitsandbytes"), "int8": ("bitsandbytes", "torchao"),
                 "int4": ("quanto", "quanto"), "gguf": ("gguf", "gguf")}
# The quantization backends: the pinned version, and the oldest the pinned diffusers/transformers accept
# (transformers' *_MIN_VERSION and diffusers' quantizers' version checks; tests/test_env.py compares them).
BACKENDS = {"bitsandbytes": {"package": "bitsandbytes", "module": "bitsandbytes", "pin": "0.50.2", "min": "0.46.1"},
            "torchao": {"package": "torchao", "module": "torchao", "pin": "0.18.0", "min": "0.15.0"},
            "quanto": {"package": "optimum-quanto", "module": "optimum.quanto", "pin": "0.2.7", "min": "0.2.6"},
            "gguf": {"package": "gguf", "module": "gguf", "pin": "0.19.0", "min": "0.10.0"}}

# Families whose activations overflow float16 (NaN latents, black images): never planned in fp16.
NOT_FP16_SAFE = {"QwenImage": "Qwen-Image overflows in float16 (NaN latents, black images; Comfy-Org/ComfyUI#10751)",
                 "Flux": "FLUX overflows in float16 (NaN latents, black images; huggingface/diffusers#9096)"}
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
MIN_GPU_BUDGET_GIB = 0.01  # 10 MiB; smaller rounds to zero bytes per GPU
MAX_GPU_BUDGET_GIB = 4096  # far past any GPU made
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most this
MAX_SIDE = 8192  # pixels: beyond this no pipeline the kit teaches has been trained, and memory explodes
MAX_GUIDANCE = 100.0  # far past any useful value; 1e300 overflows to NaN latents and a black image
MAX_STEPS = 1000  # the timesteps schedulers are trained on
MAX_FRAMES = 1000  # about a minute of video at 16 fps, far past what a GPU holds
MAX_BATCH_ITEMS = 100_000  # images in one batch run
MIN_FREE_BYTES = 64 * 2**20  # room for a run's PNGs (1-3 MB each at 1024 px) and the gallery


def fail(name: str, value, rule: str, fix: str = ""):
    raise InvalidParameterError(name, value, rule, fix)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


def fp16_unsafe(pipeline_class) -> str:
    """Why float16 breaks this pipeline family ("" when fp16-safe); for [module, Class] the class decides."""
    name = pipeline_class[-1] if isinstance(pipeline_class, list | tuple) else str(pipeline_class or "")
    return next((why for prefix, why in NOT_FP16_SAFE.items() if name.startswith(prefix)), "")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def whole(name: str, value, minimum: int, maximum: int | None = None, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(name, value, f"needs a whole number >= {minimum}" + (f" and <= {maximum}" if maximum else ""), fix)
    if maximum is not None and value > maximum:
        fail(name, value, f"is over the limit of {maximum}", fix)


def steps(name: str, value) -> None:
    whole(name, value, 1, MAX_STEPS, f"Use at most {MAX_STEPS} (typical: 20-50).")


def batch_items(name: str, count: int) -> None:
    whole(name, count, 1, MAX_BATCH_ITEMS, f"Split the batch: at most {MAX_BATCH_ITEMS:,} items per run.")


def number(name: str, value, low: float, high: float = math.inf, low_open: bool = False, fix: str = "") -> None:
    if not _is_number(value) or value > high or value < low or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        fail(name, value, f"needs a number {bound}" + (f" and <= {high}" if high != math.inf else ""), fix)


def text(name: str, value, allow_empty: bool = True) -> None:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        fail(name, value, "needs a text value" if allow_empty else "needs a non-empty text")


def flag(name: str, value) -> None:
    if not isinstance(value, bool):
        fail(name, value, "needs True or False", "With papermill pass -p NAME True (a bare word, not quoted).")


def choice(name: str, value, choices) -> None:
    if value not in choices:
        fail(name, value, f"choose one of {', '.join(repr(c) for c in choices)}")


def size(name: str, value, multiple: int = 8, family: str = "") -> None:
    """Height or width in pixels: a positive multiple of `multiple` (8 for any family; more once loaded)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_SIDE:
        fail(name, value, f"is larger than {MAX_SIDE} pixels",
             "Generate at the model's native size (e.g. 1024), then upscale.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        near = max(multiple, round(value / multiple) * multiple) if _is_number(value) else 1024
        needs = f"{family} needs a positive multiple of {multiple}" if family else \
            f"needs a positive whole number of pixels, a multiple of {multiple}"
        fail(name, value, needs, f"Try {near}.")


def num_frames(name: str, value) -> None:
    """A whole number of frames >= 1; the family's rule (k * t + 1) is checked once loaded (`check_num_frames`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_FRAMES:
        fail(name, value, f"is over the limit of {MAX_FRAMES} frames", "Try 81 (about 5 s at 16 fps).")
    whole(name, value, 1)


def call_kwargs(name: str, value) -> None:
    """Extra pipeline call arguments: a dict keyed by argument names (checked against the pipeline once loaded)."""
    if not isinstance(value, dict) or not all(isinstance(key, str) and key.isidentifier() for key in value):
        fail(name, value, "needs a dict of call argument names to values",
             'e.g. -y "pipeline_kwargs: {max_sequence_length: 128}"')


def input_image(name: str, value) -> None:
    if not isinstance(value, str):
        fail(name, value, "needs a text value: empty, a local image file, or an http(s) URL")
    if value and not value.startswith(("http://", "https://")):
        head = file_header(name, value, value, IMAGE_MAGICS, "image file (PNG, JPEG, WebP, GIF, BMP, TIFF)")
        if head.startswith(b"\x89PNG") and math.prod(int.from_bytes(head[i:i + 4]) for i in (16, 20)) > MAX_PIXELS:
            fail(name, value, f"declares more than {MAX_PIXELS:,} pixels (a decompression bomb?)", "Resize it.")


IMAGE_MAGICS, MAX_PIXELS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*"), 40_000_000


def file_header(name: str, value, path: str, magics: tuple[bytes, ...], what: str) -> bytes:
    """The first 32 bytes of `path` (from `value`): a regular file (opened without blocking), starting with `magics`."""
    try:
        descriptor = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        fail(name, value, f"needs an existing {what} ({error.strerror})")
    regular = stat.S_ISREG(os.fstat(descriptor).st_mode)
    head = os.read(descriptor, 32) if regular else b""
    os.close(descriptor)
    if not regular or not head.startswith(magics):
        why = f"it starts with {head[:8]!r}" if regular else "a folder, pipe or device"
        fail(name, value, f"is not a usable {what}: {why}", "Give the right file, or download it again.")
    return head


def parse_quantization(quantization, name: str = "quantization") -> tuple[str, str | None]:
    """("int8", None), ("gguf", "<file or URL>"), ("auto", None) ...; a clear error for anything else."""
    if isinstance(quantization, str) and quantization.startswith("gguf:"):
        source = quantization[len("gguf:"):].strip()
        if not source:
            fail(name, quantization, "gguf needs a file or URL after the colon",
                 'e.g. "gguf:qwen-image-Q4_K_M.gguf" or "gguf:https://huggingface.co/.../x.gguf".')
        if not source.split("?")[0].lower().endswith(".gguf"):
            fail(name, quantization, "the gguf source must be a .gguf file or URL")
        return "gguf", source
    if quantization not in ("auto", *NAMES):
        fail(name, quantization, f"choose one of {', '.join(map(repr, ('auto', *NAMES)))} or 'gguf:<file or URL>'")
    return quantization, None


def quantization(name: str, value) -> None:
    parse_quantization(value, name)


def quantization_to_load(name: str, value) -> None:  # a notebook's setup cell: a local GGUF file is read now
    if (found := parse_quantization(value, name))[0] == "gguf" and not found[1].startswith(("http://", "https://")):
        file_header(name, value, found[1], (b"GGUF",), "GGUF file (.gguf)")


def backend_for(quantization, on_gpu: bool) -> str:
    """The library that runs a quantization choice by default ("" for "none" and "auto")."""
    kind, _ = parse_quantization(quantization)
    return AUTO_BACKENDS[kind][0 if on_gpu else 1] if kind in AUTO_BACKENDS else ""


def prompt_list(name: str, value) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
        fail(name, value, "needs a non-empty list of non-empty prompts", 'e.g. -y "prompts: [a cat, a dog]"')


def gpu_budgets(name: str, value) -> dict[int, int]:
    """[15, 15] (GiB per GPU) -> {0: bytes, 1: bytes}; refuses what diffusers would misread."""
    if not isinstance(value, list | tuple) or not value or not all(_is_number(v) and v > 0 for v in value):
        fail(name, value, "needs a non-empty list of per-GPU budgets in GiB, each > 0", "e.g. [15, 15].")
    if not all(MIN_GPU_BUDGET_GIB <= v <= MAX_GPU_BUDGET_GIB for v in value):
        fail(name, value, f"needs per-GPU budgets in GiB, each from {MIN_GPU_BUDGET_GIB} to {MAX_GPU_BUDGET_GIB} "
             "(below that no layer fits; above it no GPU exists)", "e.g. [15, 15] for two T4s.")
    return {index: int(budget * 2**30) for index, budget in enumerate(value)}


def memory_map(name: str, value) -> None:
    if not isinstance(value, dict):
        fail(name, value, 'needs a dict of per-GPU limits like {0: "14GiB", 1: "14GiB"} (empty: the plan\'s)')


def seed(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        fail(name, value, f"needs a whole number from 0 to 2**64 - 1 ({MAX_SEED})", "e.g. 42.")


def guidance(name: str, value) -> None:
    number(name, value, 0, MAX_GUIDANCE, fix="Typical values are 1-10; 1 turns guidance off.")


def strength_and_steps(strength: float, num_inference_steps: int) -> None:
    """img2img/inpaint run int(strength x steps) denoising steps: below 1 nothing is denoised."""
    if isinstance(strength, int | float) and isinstance(num_inference_steps, int) and \
            int(strength * num_inference_steps) < 1:
        fail("strength", strength, f"strength x num_inference_steps must be >= 1 (here {num_inference_steps} steps)",
             f"Raise strength to at least {1 / num_inference_steps:g}, or take more steps.")


def nearest_existing(folder: Path) -> Path:
    return next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())


def unwritable(folder: Path) -> str | None:
    """Why `folder` (or its nearest existing parent) cannot be written, else None: a temporary file tells."""
    existing = nearest_existing(folder)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        return error.strerror or str(error)


def writable_folder(name: str, value, purpose: str = "", alternative: str = "") -> Path:
    """`value` with `~` expanded: not a file, and writable (or creatable)."""
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        fail(name, value, "is an existing file, not a folder", "Give a folder path (it is created if missing).")
    if reason := unwritable(folder):
        fail(name, value, f"cannot be written ({reason}){purpose}",
             f"Choose a folder you can write to (in Colab, under /content or a mounted Drive){alternative}.")
    return folder


def cache_folder(name: str, value) -> None:
    """Empty (the default cache), or a folder for the Hugging Face cache that can be written (created if missing)."""
    text(name, value)
    if value:
        writable_folder(name, value, ": downloads and the custom code diffusers runs go there",
                        ", or leave it empty for ~/.cache/huggingface")


def output_folder(name: str, value) -> Path:
    """A folder the kit can write images into: `~` expanded, not a file, writable (or creatable), with room."""
    text(name, value, allow_empty=False)
    folder = writable_folder(name, value)
    if (free := shutil.disk_usage(nearest_existing(folder)).free) < MIN_FREE_BYTES:
        fail(name, value, f"has only {free / 2**20:.0f} MiB free", "Free some space or choose another disk.")
    return folder


def commit(name: str, value, allow_empty: bool = True) -> None:
    """A full 40-hex commit: branches and tags can be moved to new code after you read it."""
    if not (isinstance(value, str) and (re.fullmatch(r"[0-9a-f]{40}", value) or (allow_empty and value == ""))):
        fail(name, value, "empty, or a full 40-character commit hash" if allow_empty else "needs a full 40-character "
             "commit hash", "Branches and tags can move to new code: find the commit in the repo's History, or "
             "huggingface_hub.model_info(repo).sha.")


def custom_revision(name: str, value) -> None:
    """diffusers takes "0.41.0" or "main" for a community pipeline's version, never "v0.41.0"."""
    if not (isinstance(value, str) and re.fullmatch(r"main|\d+\.\d+\.\d+", value)):
        v = isinstance(value, str) and value[:1] == "v"
        fail(name, value, "a diffusers release like '0.41.0', or 'main'",
             f"Use {value[1:]!r}: diffusers adds the 'v' itself." if v else "")


def community_name(name: str, value) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_]+", value):
        fail(name, value, "needs a community pipeline name like 'lpw_stable_diffusion'",
             "For a local file or folder pass it as custom_pipeline (a path).")


def scheduler_name(name: str, value) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Za-z0-9]*Scheduler", value):
        fail(name, value, "needs a scheduler class name like 'EulerAncestralDiscreteScheduler'")


def find_local(path) -> list[Path]:
    """Where a relative path given to a notebook may live: the working folder, then the kit's root."""
    given = Path(path).expanduser()
    return [given] if given.is_absolute() else [Path.cwd() / given, KIT_ROOT / given]


def custom_pipeline_path(name: str, value) -> Path:
    """An existing `.py` file or a folder with `pipeline.py`, never a Hub lookup."""
    candidates = find_local(value) if isinstance(value, str | Path) and str(value) else []
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".py" or (candidate / "pipeline.py").is_file():
            script = candidate.resolve() if candidate.is_file() else candidate.resolve() / "pipeline.py"
            try:  # it must define a `...Pipeline` subclass (read with ast: nothing is run)
                tree = ast.parse(script.read_bytes(), filename=str(script))
            except (SyntaxError, ValueError) as error:
                fail(name, value, f"{script} is not valid Python ({error})", "Fix the file, or pass another one.")
            imported = {alias.asname or alias.name: (alias.name, node.level > 0) for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) for alias in node.names}
            pipelines: set[str] = set()
            for node in tree.body:
                for base in getattr(node, "bases", []) if isinstance(node, ast.ClassDef) else []:
                    local = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                    original, relative = imported.get(local, (local, False))
                    if "Pipeline" in original or local in pipelines or relative:  # StableDiffusionPipelineSafe too
                        pipelines.add(node.name)
            if not pipelines:
                fail(name, value, f"{script} defines no class deriving from DiffusionPipeline (diffusers loads the "
                     "one such class in the file)", "Pass the file that defines your pipeline, or define one in it: "
                     "class MyPipeline(StableDiffusionPipeline): ...")
            return candidate.resolve()
        if candidate.is_dir():
            raise LocalPathNotFoundError("the folder has no pipeline.py", name=name, value=str(candidate),
                                         fix="A custom pipeline folder holds pipeline.py.")
    looked = ", ".join(repr(str(c)) for c in candidates) or "nothing"
    raise LocalPathNotFoundError(
        f"needs an existing local .py file or folder with pipeline.py (looked at {looked})", name=name, value=value,
        fix="diffusers would treat a missing path as a Hub repo or community pipeline name and run the code it "
            "downloads. For a community pipeline by name use community.load_community_pipeline().")
