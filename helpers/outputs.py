"""Show images inline and save them with their generation parameters, never overwriting a file."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, PngImagePlugin

from . import __version__

METADATA_KEY = "diffusers-notebook-kit"


def _describe_input(value):
    """A short text for an input that is not stored in the PNG (an image, a tensor, a callback)."""
    size = getattr(value, "size", None)
    if isinstance(value, Image.Image):
        return f"image {size[0]}x{size[1]} {value.mode}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"tensor {tuple(shape)} {getattr(value, 'dtype', '')}".strip()
    return type(value).__name__


def generation_metadata(pipe, model_id: str, call: dict, **context) -> dict:
    """What made an image, read from the call itself: `pipe(**call)`.

    Records the pipeline's real class (not a name the notebook passes), every call argument that is plain
    data, the seed from the call's generator, a description of each image/tensor input, the model and the
    versions. `context` holds labels that are not call arguments (a variant name, a run id).
    """
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
        else:
            inputs[name] = _describe_input(value)
    return {
        "model_id": str(model_id),
        "pipeline": type(pipe).__name__,
        "parameters": parameters,
        "inputs": inputs,
        "context": context,
        "kit_version": __version__,
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
    }


def save_generated(image: Image.Image, pipe, model_id: str, call: dict, output_dir: str | Path, name: str,
                   **context) -> Path:
    """Save an image that `pipe(**call)` returned, as `output_dir/<name>-seed<seed>.png`, with its metadata."""
    metadata = generation_metadata(pipe, model_id, call, **context)
    seed = metadata["parameters"].get("seed")
    return save_image(image, output_dir, name if seed is None else f"{name}-seed{seed}", metadata)


def _safe_stem(stem: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    if not stem:
        raise ValueError("An image name must contain letters or digits; got an empty name after cleaning.")
    return stem[:80]


def save_image(image: Image.Image, output_dir: str | Path, stem: str, metadata: dict | None = None) -> Path:
    """Save `image` as `output_dir/stem.png` (or `stem-1.png`, ... if taken) with metadata in a PNG text chunk.

    The file is written to a temporary name and then hard-linked into place, which fails instead
    of overwriting when the name was taken meanwhile: two writers never clobber each other, and
    a run killed mid-write leaves no truncated PNG under a real name. An all-black image (NaN output, or
    blanked by the safety checker) is saved as `stem-blank.png` with the reason in its metadata, and warned about.
    """
    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(stem)
    from . import guards  # imports torch: only when saving

    problem = guards.image_problem(image)
    if problem:  # never saved as a normal result: a warning, "-blank" in the name, the reason in the metadata
        message = guards.blank_image_message(problem, (metadata or {}).get("parameters"))
        warnings.warn(guards.BlankImageWarning(message), stacklevel=2)
        stem, metadata = f"{stem}-blank", {**(metadata or {}), "image_check": message}
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(metadata or {}, default=str, sort_keys=True))
    handle, temp_name = tempfile.mkstemp(prefix=f".{stem}-", suffix=".png.tmp", dir=output_dir)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.chmod(temp_name, 0o666 & ~_umask())
        for counter in range(10_000):
            target = output_dir / (f"{stem}.png" if counter == 0 else f"{stem}-{counter}.png")
            try:
                os.link(temp_name, target)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"More than 10000 images named {stem!r} in {str(output_dir)!r}; choose another name.")
    finally:
        os.unlink(temp_name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def read_metadata(path: str | Path) -> dict:
    """The generation metadata saved by `save_image` ({} for a PNG without it).

    Raises `NotAnImageError` (a ValueError naming the file) for a file that is not a readable image.
    """
    try:
        with Image.open(path) as image:
            text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    except (OSError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise NotAnImageError(f"{str(path)!r} is not a readable PNG ({error}); it was skipped.") from None
    return json.loads(text) if text else {}


class NotAnImageError(ValueError):
    """A file named like an image that PIL cannot read."""


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
    rows = math.ceil(len(images) / cols)
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    caption = 14 if labels else 0
    grid = Image.new("RGB", (cols * width, rows * (height + caption)), "white")
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


def gallery_path(folder: Path) -> Path:
    """`folder/index.html`, unless a file the kit did not write is there: then `kit-gallery.html` beside it."""
    index = folder / "index.html"
    if not index.exists() or GALLERY_MARKER in index.read_text(errors="replace"):
        return index
    return folder / "kit-gallery.html"


def write_gallery(folder: str | Path, title: str = "diffusers-notebook-kit run") -> Path:
    """Write an HTML page of every PNG below `folder` with its prompt, seed and pipeline, openable in a browser.

    The page is `index.html`, or `kit-gallery.html` when an `index.html` the kit did not write is there (never
    overwritten). It is written to a temporary file and renamed, so a full disk leaves no partial page.
    """
    import html

    folder = Path(folder).expanduser()
    cards = []
    for png, meta in saved_images(folder, "**/*.png"):
        params = meta.get("parameters", {})
        variant = meta.get("context", {}).get("variant")
        caption = " | ".join(str(part) for part in (variant, meta.get("pipeline"),
                                                     f"seed {params['seed']}" if "seed" in params else None) if part)
        relative = png.relative_to(folder).as_posix()
        cards.append(
            f'<figure><a href="{html.escape(relative)}"><img src="{html.escape(relative)}" alt="'
            f'{html.escape(str(params.get("prompt", png.stem)))}"></a><figcaption><b>'
            f'{html.escape(str(params.get("prompt", png.stem)))}</b><br>{html.escape(caption)}<br>'
            f"<small>{html.escape(relative)}</small></figcaption></figure>"
        )
    page = (
        f"<!doctype html>{GALLERY_MARKER}<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em}main{display:flex;flex-wrap:wrap;gap:1em}"
        "figure{width:260px;margin:0}figcaption{overflow-wrap:anywhere}"
        "img{width:256px;image-rendering:pixelated;border:1px solid #ccc}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>{len(cards)} images</p><main>{''.join(cards)}</main>"
        "</body></html>\n"
    )
    target = gallery_path(folder)
    if target.exists() and GALLERY_MARKER not in target.read_text(errors="replace"):
        raise FileExistsError(f"{str(target)!r} exists and was not written by the kit; move it to write the gallery.")
    write_text_atomically(target, page)
    return target


def write_text_atomically(target: Path, text: str) -> None:
    """Write `text` to a temporary file beside `target`, then rename it over `target` (all or nothing)."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:  # TEMP until core-hub merge
    """Write `data` (text or bytes) beside `path`, then rename it over `path`: all or nothing."""
    write_text_atomically(Path(path), data if isinstance(data, str) else data.decode())


def sha256_file(path: str | Path) -> str:  # TEMP until core-hub merge
    """The file's sha256, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
