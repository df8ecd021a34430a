"""Show images inline and save them with their generation parameters, never overwriting a file."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
import warnings
from contextlib import suppress
from pathlib import Path

from huggingface_hub.utils.sha import sha_fileobj
from PIL import Image, ImageDraw, PngImagePlugin

from . import __version__
from .errors import BlankImageWarning, NotAnImageError

METADATA_KEY = "diffusers-notebook-kit"


def generation_metadata(pipe, model_id: str, call: dict, **context) -> dict:
    """What made an image, from `pipe(**call)`: class, plain arguments, seed, inputs described, versions, `context`."""
    import diffusers
    import torch
    parameters, inputs = {}, {}
    for name, value in call.items():
        if name.startswith("callback"):
            continue  # progress and guard hooks: how the call was watched, not what it made
        if isinstance(value, torch.Generator):
            parameters["seed"] = value.initial_seed()
        elif value is None or isinstance(value, str | int | float | bool) or (
                isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value)):
            parameters[name] = value
        elif isinstance(value, Image.Image):  # inputs are described, not stored
            inputs[name] = f"image {value.size[0]}x{value.size[1]} {value.mode}"
        elif getattr(value, "shape", None) is not None:
            inputs[name] = f"tensor {tuple(value.shape)} {getattr(value, 'dtype', '')}".strip()
        else:
            inputs[name] = type(value).__name__
    return {"model_id": str(model_id), "pipeline": type(pipe).__name__, "parameters": parameters, "inputs": inputs,
            "context": context, "kit_version": __version__, "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__}


def save_generated(image: Image.Image, pipe, model_id: str, call: dict, output_dir: str | Path, name: str,
                   **context) -> Path:
    """Save an image that `pipe(**call)` returned, as `output_dir/<name>-seed<seed>.png`, with its metadata."""
    metadata = generation_metadata(pipe, model_id, call, **context)
    seed = metadata["parameters"].get("seed")
    return save_image(image, output_dir, name if seed is None else f"{name}-seed{seed}", metadata)


def safe_stem(stem: str) -> str:
    """`stem` reduced to letters, digits, '.', '_' and '-' (at most 80), safe as a file name anywhere."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    if not stem:
        raise ValueError("An image name must contain letters or digits; got an empty name after cleaning.")
    return stem[:80]


def save_image(image: Image.Image, output_dir: str | Path, stem: str, metadata: dict | None = None) -> Path:
    """Save `image` as `output_dir/stem.png` (`link_unused_name`: never overwriting) with metadata in a PNG text
    chunk. A blank image is `stem-blank.png`."""
    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    if problem := image_problem(image):
        parameters = (metadata or {}).get("parameters") or {}
        message = (f"This image is {problem}: either the safety checker blanked it (see nsfw_content_detected), or the "
                   "pipeline produced NaN. Likely cause if NaN: "
                   f"{likely_cause(parameters.get('guidance_scale'), parameters.get('dtype'))}")
        warnings.warn(BlankImageWarning(message), stacklevel=2)
        stem, metadata = f"{stem}-blank", {**(metadata or {}), "image_check": message}
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata or {}, default=str, sort_keys=True))
    handle, temp_name = tempfile.mkstemp(prefix=f".{stem}-", suffix=".png.tmp", dir=output_dir)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        return link_unused_name(output_dir, stem, {".png": temp_name})
    finally:
        os.unlink(temp_name)


def link_unused_name(output_dir: Path, stem: str, temps: dict[str, str]) -> Path:
    """Hard-link each temporary file to `output_dir/<name><suffix>` (its key), `name` the first of `stem`, `stem-1`,
    ... free for all of them: never overwrites. Returns the first link. Made readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for temp in temps.values():
        os.chmod(temp, 0o666 & ~umask)
    for counter in range(10_000):
        name, linked = stem if counter == 0 else f"{stem}-{counter}", []
        with suppress(FileExistsError):
            for suffix, temp in temps.items():
                os.link(temp, output_dir / f"{name}{suffix}")
                linked.append(output_dir / f"{name}{suffix}")
            return linked[0]
        for path in linked:
            path.unlink()
    raise FileExistsError(f"More than 10000 files named {stem!r} in {str(output_dir)!r}; choose another name.")


def read_metadata(path: str | Path) -> dict:
    """The generation metadata saved by `save_image` ({} for a PNG without it); NotAnImageError for a non-image."""
    try:
        with Image.open(path) as image:
            text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    except (OSError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise NotAnImageError(f"{str(path)!r} is not a readable PNG ({error}); it was skipped") from None
    return json.loads(text) if text else {}


def saved_images(folder: str | Path, pattern: str = "*.png") -> list[tuple[Path, dict]]:
    """Every readable PNG under `folder` with its metadata; files that are not images are skipped with a note."""
    found = []
    for path in sorted(Path(folder).expanduser().glob(pattern)):
        try:
            found.append((path, read_metadata(path)))
        except NotAnImageError as error:
            print(f"note: {error}")
    return found


def make_grid(images: list[Image.Image], labels: list[str] | None = None, cols: int | None = None) -> Image.Image:
    """Tile images left to right, top to bottom, each with an optional caption strip under it."""
    if not images:
        raise ValueError("make_grid needs at least one image; got an empty list.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"Got {len(labels)} labels for {len(images)} images; give one label per image.")
    cols = cols or min(len(images), 4)
    width, height = max(image.width for image in images), max(image.height for image in images)
    caption = 14 if labels else 0
    grid = Image.new("RGB", (cols * width, math.ceil(len(images) / cols) * (height + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % cols) * width, (i // cols) * (height + caption)
        grid.paste(image.convert("RGB"), (x, y))
        if labels:
            draw.text((x + 2, y + height + 1), labels[i][: max(4, width // 6)], fill="black")
    return grid


def show(images, labels: list[str] | None = None, cols: int | None = None) -> None:
    """Display one image, or a labelled grid of several, inline in Jupyter/Colab."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    picture = images[0] if len(images) == 1 and not labels else make_grid(images, labels, cols)
    try:
        from IPython.display import display
        display(picture)
    except ImportError:
        picture.show()


GALLERY_MARKER = "<!-- written by diffusers-notebook-kit: safe to replace -->"


def write_gallery(folder: str | Path, title: str = "diffusers-notebook-kit run") -> Path:
    """Write an HTML page of every PNG below `folder` with its prompt, seed and pipeline: `index.html`, or
    `kit-gallery.html` when an `index.html` the kit did not write is there (never overwritten); written atomically."""
    import html
    folder = Path(folder).expanduser()
    cards = []
    for png, meta in saved_images(folder, "**/*.png"):
        params = meta.get("parameters", {})
        caption = " | ".join(str(part) for part in (meta.get("context", {}).get("variant"), meta.get("pipeline"),
                                                     f"seed {params['seed']}" if "seed" in params else None) if part)
        relative = html.escape(png.relative_to(folder).as_posix())
        prompt = html.escape(str(params.get("prompt", png.stem)))
        cards.append(f'<figure><a href="{relative}"><img src="{relative}" alt="{prompt}"></a><figcaption><b>{prompt}'
                     f"</b><br>{html.escape(caption)}<br><small>{relative}</small></figcaption></figure>")
    page = (f"<!doctype html>{GALLERY_MARKER}<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}main{display:flex;flex-wrap:wrap;gap:1em}figure{width:260px;"
            "margin:0}figcaption{overflow-wrap:anywhere}img{width:256px;image-rendering:pixelated;border:1px solid "
            "#ccc}"
            f"</style></head><body><h1>{html.escape(title)}</h1><p>{len(cards)} images</p><main>{''.join(cards)}</main>"
            "</body></html>\n")
    target = folder / "index.html"
    if target.exists() and GALLERY_MARKER not in target.read_text(errors="replace"):
        target = folder / "kit-gallery.html"
    if target.exists() and GALLERY_MARKER not in target.read_text(errors="replace"):
        raise FileExistsError(f"{str(target)!r} exists and was not written by the kit; move it to write the gallery.")
    write_atomically(target, page)
    return target


def write_atomically(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` all or nothing: a new temporary file beside it (O_EXCL, never through a link), fsynced,
    then renamed over `path`; on any failure the temporary file is removed and `path` is untouched."""
    path, payload = Path(path), data.encode() if isinstance(data, str) else bytes(data)
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (huggingface_hub's sha_fileobj, read in 1 MiB blocks)."""
    with open(path, "rb") as file:
        return sha_fileobj(file).hex()


# --- broken images: NaN output or a blanked one -------------------------------------------------------------------

TYPICAL_GUIDANCE = (1.0, 30.0)  # what diffusers' pipelines are used with; far above it the latents overflow


def likely_cause(guidance_scale: float | None = None, dtype=None) -> str:
    """The most likely reason for NaN/black output, and its fix, from the call's settings."""
    causes, (low, high) = [], TYPICAL_GUIDANCE
    if guidance_scale is not None and not low / 100 <= abs(guidance_scale) <= high * 10:
        causes.append(f"guidance_scale={guidance_scale!r} is far out of range (typical {low:g}-{high:g}): the guided "
                      "noise prediction overflows. Fix: use a value in that range")
    if str(dtype).removeprefix("torch.") == "float16":
        causes.append("float16 overflow (float16 tops out at 65504; Qwen-Image and FLUX overflow in it, SDXL's VAE "
                      "too). Fix: dtype='bfloat16' on GPUs that have it, float32 on a T4 or CPU, or for SDXL the "
                      "fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix)")
    if not causes:
        causes.append("an overflow in the model (float16 weights, or an extreme parameter). Fix: try "
                      "dtype='float32' (or 'bfloat16' on a GPU) and default parameters")
    return "; or ".join(causes) + "."


def image_problem(image) -> str | None:
    """"NaN/inf pixels" (a float array), "all black" (every pixel zero: NaN output decodes to 0), else None."""
    import numpy as np
    array = np.asarray(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return "NaN/inf pixels"
    if array.size and not array.any():
        return "all black"
    return None


def gather(output_dir: str, run_id: str, prompts: list[str]) -> tuple[list[Image.Image], list[dict]]:
    """A data-parallel run's images in prompt order, with their metadata; raises if a prompt is missing or doubled."""
    found: dict[int, list[tuple[Path, dict]]] = {}
    for path, metadata in saved_images(output_dir):
        context = metadata.get("context", {})
        if context.get("run_id") == run_id:
            found.setdefault(context["prompt_index"], []).append((path, metadata))
    problems = [f"prompt {i} rendered {len(found.get(i, []))} times" for i in range(len(prompts))
                if len(found.get(i, [])) != 1]
    if problems:
        raise RuntimeError(f"Data-parallel run {run_id} in {output_dir}: " + "; ".join(problems))
    images = []
    for path, _ in (found[i][0] for i in range(len(prompts))):
        with Image.open(path) as image:
            images.append(image.copy())
    return images, [found[i][0][1] for i in range(len(prompts))]
