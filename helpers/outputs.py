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


def generation_metadata(pipe, model_id: str, **params) -> dict:
    """What made an image: model, pipeline class, parameters (seed included) and versions."""
    import diffusers

    return {
        "model_id": str(model_id),
        "pipeline": type(pipe).__name__,
        "parameters": params,
        "kit_version": __version__,
        "diffusers_version": diffusers.__version__,
    }


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
    output_dir = Path(output_dir)
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
    """The generation metadata saved by `save_image` ({} for a PNG without it)."""
    with Image.open(path) as image:
        text = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    return json.loads(text) if text else {}


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


def write_gallery(folder: str | Path, title: str = "diffusers-notebook-kit run") -> Path:
    """Write `folder/index.html`: every PNG below it with its prompt, seed and pipeline, openable in a browser."""
    import html

    folder = Path(folder)
    cards = []
    for png in sorted(folder.rglob("*.png")):
        meta = read_metadata(png)
        params = meta.get("parameters", {})
        caption = " | ".join(str(part) for part in (params.get("variant"), meta.get("pipeline"),
                                                     f"seed {params['seed']}" if "seed" in params else None) if part)
        relative = png.relative_to(folder).as_posix()
        cards.append(
            f'<figure><a href="{html.escape(relative)}"><img src="{html.escape(relative)}" alt="'
            f'{html.escape(str(params.get("prompt", png.stem)))}"></a><figcaption><b>'
            f'{html.escape(str(params.get("prompt", png.stem)))}</b><br>{html.escape(caption)}<br>'
            f"<small>{html.escape(relative)}</small></figcaption></figure>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em}main{display:flex;flex-wrap:wrap;gap:1em}"
        "figure{width:260px;margin:0}figcaption{overflow-wrap:anywhere}"
        "img{width:256px;image-rendering:pixelated;border:1px solid #ccc}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>{len(cards)} images</p><main>{''.join(cards)}</main>"
        "</body></html>\n"
    )
    index = folder / "index.html"
    index.write_text(page)
    return index
