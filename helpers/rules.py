"""Every parameter rule of the kit, each defined once: the notebooks' check and the helpers call these.

A rule takes the parameter's name and value and raises `InvalidParameterError` (name, value, rule, fix)
when the value breaks it. Light on purpose: no torch, no diffusers, no huggingface_hub, so a notebook can
check all its parameters before the pinned stack is installed or imported.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path

from . import KIT_ROOT
from .errors import InvalidParameterError, LocalPathNotFoundError

# The one list of dtype and device_map names; helpers.loading maps them onto torch and diffusers.
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                 "bfloat16": "bfloat16", "bf16": "bfloat16"}
DTYPE_NAMES = ("auto", *DTYPE_ALIASES)
DEVICE_MAPS = ("auto", "cuda", "balanced", "cpu")
# The load plan's choices (helpers.planning); "gguf:<file or URL>" is also a quantization.
QUANTIZATIONS = ("auto", "none", "int8", "int4", "nf4")
OFFLOADS = ("auto", "none", "model", "group", "sequential")
HARDWARE_NAMES = ("auto", "colab-t4", "colab-l4", "colab-a100", "kaggle-2xt4", "a100-80", "cpu")
COMMIT = re.compile(r"[0-9a-f]{40}")
CUSTOM_REVISION = re.compile(r"main|\d+\.\d+\.\d+")
COMMUNITY_NAME = re.compile(r"[A-Za-z0-9_]+")


def fail(name: str, value, rule: str, fix: str = ""):
    raise InvalidParameterError(name, value, rule, fix)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def whole(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(name, value, f"needs a whole number >= {minimum}")


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
        fail(name, value, f"is larger than {MAX_SIDE} pixels", "Generate at the model's native size (e.g. 1024), "
             "then upscale.")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        near = max(multiple, round(value / multiple) * multiple) if _is_number(value) else 1024
        needs = f"{family} needs a positive multiple of {multiple}" if family else \
            f"needs a positive whole number of pixels, a multiple of {multiple}"
        fail(name, value, needs, f"Try {near}.")


def num_frames(name: str, value) -> None:
    """Wan's VAE packs 4 frames into one latent: 4k + 1 frames (diffusers would round silently)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (value - 1) % 4:
        near = max(1, round((value - 1) / 4) * 4 + 1) if _is_number(value) else 81
        fail(name, value, "needs 4k + 1 frames (1, 5, 9, ..., 81): Wan's VAE packs 4 frames into one latent",
             f"Try {near}.")


def input_image(name: str, value) -> None:
    if not isinstance(value, str):
        fail(name, value, "needs a text value: empty, a local image file, or an http(s) URL")
    if value and not value.startswith(("http://", "https://")) and not Path(value).expanduser().is_file():
        fail(name, value, "needs an existing image file (or an http(s) URL, or empty)")


def quantization(name: str, value) -> None:
    if not (isinstance(value, str) and value.startswith("gguf:") and len(value) > 5):
        choice(name, value, QUANTIZATIONS + ("gguf:<file or URL>",))


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


MIN_GPU_BUDGET_GIB = 0.01  # 10 MiB; smaller rounds to zero bytes per GPU
MAX_GPU_BUDGET_GIB = 4096  # far past any GPU made
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most this
MAX_SIDE = 8192  # pixels: beyond this no pipeline the kit teaches has been trained, and memory explodes
MAX_GUIDANCE = 100.0  # far past any useful value; 1e300 overflows to NaN latents and a black image


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


MIN_FREE_BYTES = 64 * 2**20  # room for a run's PNGs (1-3 MB each at 1024 px) and the gallery


def nearest_existing(folder: Path) -> Path:
    return next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())


def unwritable(folder: Path) -> str | None:
    """Why `folder` (or its nearest existing parent, when it does not exist yet) cannot be written, else None.
    Checked by writing a temporary file: permission bits say little when running as root."""
    existing = nearest_existing(folder)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def writable_folder(name: str, value, purpose: str = "", alternative: str = "") -> Path:
    """`value` with `~` expanded: not a file, and writable (or creatable); `purpose` and `alternative` extend the
    message and the fix."""
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        fail(name, value, "is an existing file, not a folder", "Give a folder path (it is created if missing).")
    reason = unwritable(folder)
    if reason:
        fail(name, value, f"cannot be written ({reason}){purpose}",
             f"Choose a folder you can write to (in Colab, under /content or a mounted Drive){alternative}.")
    return folder


def cache_folder(name: str, value) -> None:
    """Empty (the default cache), or a folder for the Hugging Face cache that can be written (created if missing)."""
    text(name, value)
    if not value:
        return
    writable_folder(name, value, ": downloads and the custom code diffusers runs go there",
                    ", or leave it empty for ~/.cache/huggingface")


def output_folder(name: str, value) -> Path:
    """A folder the kit can write images into: `~` expanded, not a file, writable (or creatable), with room.

    Checked by writing a temporary file in the folder, or in its nearest existing parent when it does not exist
    yet (permission bits say little when running as root). Nothing is left behind, not even the folder.
    """
    text(name, value, allow_empty=False)
    folder = writable_folder(name, value)
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free < MIN_FREE_BYTES:
        fail(name, value, f"has only {free / 2**20:.0f} MiB free", "Free some space or choose another disk.")
    return folder


def commit(name: str, value, allow_empty: bool = True) -> None:
    """A full 40-hex commit: branches and tags can be moved to new code after you read it."""
    if isinstance(value, str) and (COMMIT.fullmatch(value) or (allow_empty and value == "")):
        return
    fail(name, value, "needs a full 40-character commit hash" if not allow_empty else
         "empty, or a full 40-character commit hash",
         "Branches and tags can move to new code: find the commit in the repo's History, or "
         "huggingface_hub.model_info(repo).sha.")


def custom_revision(name: str, value) -> None:
    """diffusers takes "0.41.0" or "main" for a community pipeline's version, never "v0.41.0"."""
    if isinstance(value, str) and CUSTOM_REVISION.fullmatch(value):
        return
    starts_with_v = isinstance(value, str) and value[:1] == "v"
    fail(name, value, "a diffusers release like '0.41.0', or 'main'",
         f"Use {value[1:]!r}: diffusers adds the 'v' itself." if starts_with_v else "")


def community_name(name: str, value) -> None:
    if not isinstance(value, str) or not COMMUNITY_NAME.fullmatch(value):
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
        if candidate.is_file() and candidate.suffix == ".py":
            defines_pipeline_class(name, value, candidate.resolve())
            return candidate.resolve()
        if candidate.is_dir():
            if (candidate / "pipeline.py").is_file():
                defines_pipeline_class(name, value, candidate.resolve() / "pipeline.py")
                return candidate.resolve()
            raise LocalPathNotFoundError("the folder has no pipeline.py", name=name, value=str(candidate),
                                         fix="A custom pipeline folder holds pipeline.py.")
    looked = ", ".join(repr(str(c)) for c in candidates) or "nothing"
    raise LocalPathNotFoundError(
        f"needs an existing local .py file or folder with pipeline.py (looked at {looked})",
        name=name, value=value,
        fix="diffusers would treat a missing path as a Hub repo or community pipeline name and run the code it "
            "downloads. For a community pipeline by name use community.load_community_pipeline().",
    )


def defines_pipeline_class(name: str, value, script: Path) -> None:
    """The file defines a class deriving from a `...Pipeline` (diffusers takes the one DiffusionPipeline
    subclass it finds; with none it fails deep inside from_pretrained). Read with ast: nothing is run."""
    import ast

    try:
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
        fail(name, value, f"{script} defines no class deriving from DiffusionPipeline (diffusers loads the one "
             "such class in the file)", "Pass the file that defines your pipeline, or define one in it: "
             "class MyPipeline(StableDiffusionPipeline): ...")


# TEMP until core-plan merge
# The quantization backends: the version the kit installs ("pin") and the oldest the pinned diffusers and
# transformers accept ("min"); `package` is pip's name, `module` the import name.
BACKENDS = {
    "bitsandbytes": {"package": "bitsandbytes", "module": "bitsandbytes", "pin": "0.50.2", "min": "0.46.1"},
    "torchao": {"package": "torchao", "module": "torchao", "pin": "0.18.0", "min": "0.15.0"},
    "quanto": {"package": "optimum-quanto", "module": "optimum.quanto", "pin": "0.2.7", "min": "0.2.6"},
    "gguf": {"package": "gguf", "module": "gguf", "pin": "0.19.0", "min": "0.10.0"},
}
