"""Video pipelines' output: check the frames, save an MP4 with its record beside it, show it inline.

Wan pipelines (`WanPipeline`, `WanImageToVideoPipeline`) return `.frames[0]`: a (frames, height, width, 3)
float array in [0, 1]. diffusers' `export_to_video` writes the MP4 through imageio and imageio-ffmpeg (the
ffmpeg binary ships inside the imageio-ffmpeg wheel: no system ffmpeg needed). An MP4 has no free-text field
like a PNG's text chunk, so the generation record (the same shape as `outputs.generation_metadata`) goes in a
sidecar `<name>.json` beside it. Saving never overwrites: a taken name gets a numbered suffix, for the pair.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidParameterError, KitError
from .outputs import current_umask, safe_stem

TEMPORAL_FACTOR = 4  # Wan's VAE compresses 4 frames into one latent frame: num_frames must be 4k + 1


class BadVideoError(KitError, ValueError):
    """Frames that must not be saved as a result (NaN, all black); the message says what to change."""


def check_num_frames(pipe, num_frames: int) -> None:
    """Wan needs `num_frames - 1` divisible by the VAE's temporal factor; diffusers would round it silently."""
    factor = getattr(pipe, "vae_scale_factor_temporal", TEMPORAL_FACTOR)
    name = pipe.__name__ if isinstance(pipe, type) else type(pipe).__name__
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % factor:
        near = max(1, round(((num_frames if isinstance(num_frames, int) else 81) - 1) / factor) * factor + 1)
        raise InvalidParameterError(
            "num_frames", num_frames, f"{name} needs {factor}k + 1 frames (1, 5, ..., 81)",
            f"Try {near}; diffusers would round it without saying so.",
        )


def as_array(frames) -> np.ndarray:
    """Frames as one (frames, height, width, 3) float array in [0, 1] (from an array or a list of PIL images)."""
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        frames = np.stack([np.asarray(frame.convert("RGB"), dtype=np.float32) / 255 for frame in frames])
    array = np.asarray(frames, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise BadVideoError(f"Expected frames shaped (frames, height, width, 3); got {array.shape}. "
                            "Pass `result.frames[0]` of a video pipeline called with output_type='np'.")
    return array


def check_frames(frames) -> np.ndarray:
    """Refuse frames that would be a wrong result saved silently: NaN/inf, or every frame black."""
    array = as_array(frames)
    if not np.isfinite(array).all():
        raise BadVideoError(
            "The video has NaN or infinite pixels, so it was not saved. This usually means float16 overflowed: "
            'load with dtype="bfloat16" (or "float32" on CPU).'
        )
    if array.max() <= 1 / 255:
        raise BadVideoError("Every frame is black, so the video was not saved. Check the dtype (float16 can "
                            "overflow to black) and the number of steps.")
    return array


def frames_to_images(frames) -> list[Image.Image]:
    """Each frame as an 8-bit RGB PIL image (rounded, clipped to [0, 1] first)."""
    array = as_array(frames)
    return [Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8)) for frame in array]


def sidecar(video: str | Path) -> Path:
    """Where the generation record of `video` lives: the same name with .json."""
    return Path(video).with_suffix(".json")


def save_video(frames, output_dir: str | Path, stem: str, metadata: dict | None = None, fps: int = 16) -> Path:
    """Write `output_dir/stem.mp4` with diffusers' `export_to_video`, and its record in `stem.json`.

    Both files are written to temporary names first, then hard-linked into place; a name taken by either
    file moves the pair to the next suffix (`stem-1.mp4` + `stem-1.json`). A killed run leaves no half file
    under a real name, and nothing existing is overwritten.
    """
    from diffusers.utils import export_to_video

    array = check_frames(frames)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    record = dict(metadata or {})
    record["video"] = {"container": "mp4", "fps": fps, "frames": int(array.shape[0]),
                       "height": int(array.shape[1]), "width": int(array.shape[2])}
    temps = []
    try:
        handle, temp_video = tempfile.mkstemp(prefix=f".{stem}-", suffix=".mp4", dir=output_dir)
        os.close(handle)
        temps.append(temp_video)
        export_to_video(list(array), temp_video, fps=fps)
        handle, temp_json = tempfile.mkstemp(prefix=f".{stem}-", suffix=".json.tmp", dir=output_dir)
        temps.append(temp_json)
        with os.fdopen(handle, "w") as file:
            json.dump(record, file, default=str, indent=2, sort_keys=True)
        for temp in temps:
            os.chmod(temp, 0o666 & ~current_umask())
        for counter in range(10_000):
            name = stem if counter == 0 else f"{stem}-{counter}"
            video, record_path = output_dir / f"{name}.mp4", output_dir / f"{name}.json"
            try:
                os.link(temp_video, video)
            except FileExistsError:
                continue
            try:
                os.link(temp_json, record_path)
            except FileExistsError:
                video.unlink()
                continue
            return video
        raise FileExistsError(f"More than 10000 videos named {stem!r} in {str(output_dir)!r}; choose another name.")
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.unlink(temp)


def read_metadata(video: str | Path) -> dict:
    """The generation record saved beside `video` by `save_video`."""
    return json.loads(sidecar(video).read_text())


def read_frames(video: str | Path) -> np.ndarray:
    """Decode an MP4 back into a (frames, height, width, 3) uint8 array (to check what was written)."""
    import imageio.v3 as iio

    return iio.imread(video, plugin="FFMPEG")


def animated_gif(frames, fps: int = 16, max_side: int = 320) -> bytes:
    """The frames as a looping animated GIF, scaled down to `max_side` pixels (a light inline preview)."""
    images = frames_to_images(frames)
    scale = min(1.0, max_side / max(images[0].size))
    if scale < 1:
        size = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
        images = [image.resize(size, Image.Resampling.LANCZOS) for image in images]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0)
    return buffer.getvalue()


def video_tag(video: str | Path, width: int = 480) -> str:
    """An HTML5 <video> element with the MP4 embedded (plays inline in Jupyter and Colab)."""
    data = base64.b64encode(Path(video).read_bytes()).decode("ascii")
    return (f'<video width="{width}" controls autoplay loop muted playsinline>'
            f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>')


def show(frames=None, video: str | Path | None = None, fps: int = 16) -> None:
    """Display an animated GIF preview of `frames`, and the MP4 itself when `video` is given."""
    try:
        from IPython.display import HTML, display
        from IPython.display import Image as IPythonImage
    except ImportError:
        return
    if frames is not None:
        display(IPythonImage(data=animated_gif(frames, fps), format="gif"))
    if video is not None:
        display(HTML(video_tag(video)))


def weights_bytes(source: str, dtype) -> int:
    """Bytes of all weights of a pipeline at `dtype`, from the planner (shipped real configs, or the folder's).

    Building on the meta device makes diffusers log, for Wan's transformer, that some modules "should be kept
    in float32" when cast: true for loading, meaningless for counting, so diffusers' log is quieted meanwhile.
    """
    from diffusers.utils import logging as diffusers_logging

    from . import planning

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return sum(size.bytes for size in planning.component_sizes(source, dtype))
    finally:
        diffusers_logging.set_verbosity(previous)
