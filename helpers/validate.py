"""Check every notebook parameter before anything slow runs (no torch, no diffusers imported here).

`check(globals())` in the first cell after the parameters validates each parameter the notebook defines,
by name, against one rule table shared by all notebooks; a bad value fails at once with a message that
names the parameter, the value and what is allowed. Rules about a particular model (a size multiple of
16 for Qwen-Image, a scheduler from `pipe.scheduler.compatibles`) are checked again once it is loaded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from . import KIT_ROOT, sources
from .errors import InvalidParameterError, KitError

# The one list of dtype and device_map names; helpers.loading maps them onto torch and diffusers.
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                 "bfloat16": "bfloat16", "bf16": "bfloat16"}
DTYPE_NAMES = ("auto", *DTYPE_ALIASES)
DEVICE_MAPS = ("auto", "cuda", "balanced", "cpu")


def _fail(name, value, allowed, hint=""):
    raise InvalidParameterError(name, value, allowed, hint)


def _whole(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, value, f"needs a whole number >= {minimum}")


def _number(name, value, low, high=math.inf, low_open=False):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        _fail(name, value, f"needs a number {bound}" + (f" and <= {high}" if high != math.inf else ""))


def _text(name, value, allow_empty=True):
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        _fail(name, value, "needs a text value" if allow_empty else "needs a non-empty text")


def _flag(name, value):
    if not isinstance(value, bool):
        _fail(name, value, "needs True or False", "With papermill pass -p NAME True (a bare word, not quoted).")


def _choice(name, value, choices):
    if value not in choices:
        _fail(name, value, f"choose one of {', '.join(repr(c) for c in choices)}")


def _size(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
        near = max(8, round(value / 8) * 8) if isinstance(value, int | float) and not isinstance(value, bool) else 1024
        _fail(name, value, "needs a positive whole number of pixels, a multiple of 8", f"Try {near}.")


def _model(name, value, optional=False):
    if optional and value == "":
        return
    try:
        sources.resolve_model_source(value)
    except KitError as error:
        _fail(name, value, str(error).split(" is not valid: ")[-1].rstrip("."))


def _prompt_list(name, value):
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
        _fail(name, value, "needs a non-empty list of non-empty prompts", 'e.g. -y "prompts: [a cat, a dog]"')


def _budgets(name, value):
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value
    ):
        _fail(name, value, "needs a list of per-GPU budgets in GiB, each > 0 (empty: the GPUs present)")


def _memory_map(name, value):
    if not isinstance(value, dict):
        _fail(name, value, 'needs a dict of per-GPU limits like {0: "14GiB", 1: "14GiB"} (empty: the plan\'s)')


def _local_code(name, value):
    path = Path(value).expanduser() if isinstance(value, str) and value else None
    places = [] if path is None else [path] if path.is_absolute() else [Path.cwd() / path, KIT_ROOT / path]
    if not any(place.exists() for place in places):
        _fail(name, value, "needs an existing local .py file or folder with pipeline.py",
              "A missing path would be sent to the Hub as a repo or community name.")


def _identifier(name, value):
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_]+", value):
        _fail(name, value, "needs a bare name like 'lpw_stable_diffusion'")


def _scheduler(name, value):
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Za-z0-9]*Scheduler", value):
        _fail(name, value, "needs a scheduler class name like 'EulerAncestralDiscreteScheduler'")


def _custom_revision(name, value):
    if not isinstance(value, str) or not re.fullmatch(r"main|\d+\.\d+\.\d+", value):
        starts_with_v = isinstance(value, str) and value[:1] == "v"
        hint = f"Use {value[1:]!r}: diffusers adds the 'v' itself." if starts_with_v else ""
        _fail(name, value, "a diffusers release like '0.41.0', or 'main'", hint)


def _prompts_file(name, value):
    """Empty (use `prompts`), or a .txt/.csv/.jsonl file read in full now: a bad row is named by its line."""
    _text(name, value)
    if value:
        from .prompts_file import PromptsFileError, read_prompts

        try:
            read_prompts(value)
        except PromptsFileError as error:
            _fail(name, value, str(error), "The columns: prompt, negative_prompt, seed, num_inference_steps, "
                  "guidance_scale (see the README's prompts-file format).")


def _commit(name, value):
    if not isinstance(value, str) or (value and not re.fullmatch(r"[0-9a-f]{40}", value)):
        _fail(name, value, "empty, or a full 40-character commit hash", "Branches and tags can move to new code.")


RULES = {
    "model_id": _model,
    "vae_id": _model,
    "safety_model_id": _model,
    "components_repo": lambda n, v: _model(n, v, optional=True),
    "prompt": lambda n, v: _text(n, v, allow_empty=False),
    "negative_prompt": _text,
    "height": _size,
    "width": _size,
    "num_inference_steps": lambda n, v: _whole(n, v, 1),
    "num_processes": lambda n, v: _whole(n, v, 1),
    "seed": lambda n, v: _whole(n, v, 0),
    "guidance_scale": lambda n, v: _number(n, v, 0),
    "strength": lambda n, v: _number(n, v, 0, 1, low_open=True),
    "dtype": lambda n, v: _choice(n, v, DTYPE_NAMES),
    "device_map": lambda n, v: _choice(n, v, DEVICE_MAPS),
    "parallel_loading": _flag,
    "install": _flag,
    "report_only": _flag,
    "enable_pag": _flag,
    "local_dir": _text,
    "hf_home": _text,
    "output_dir": lambda n, v: _text(n, v, allow_empty=False),
    "scheduler": _scheduler,
    "prompts": _prompt_list,
    "gpu_memory_gib": _budgets,
    "max_memory": _memory_map,
    "community_pipeline": _local_code,
    "hub_community_name": _identifier,
    "custom_revision": _custom_revision,
    "revision": _commit,
    "prompts_file": _prompts_file,
    "seeds_per_prompt": lambda n, v: _whole(n, v, 1),
    "resume": _flag,
    "quantization": lambda n, v: _choice(n, v, ("auto", "none")),  # the fit planner adds its choices
    "offload": lambda n, v: _choice(n, v, ("auto", "none")),
}


def check(namespace: dict) -> None:
    """Validate every parameter in `namespace` (a notebook's `globals()`) that has a rule."""
    for name, rule in RULES.items():
        if name in namespace:
            rule(name, namespace[name])
