"""Video pipelines' output: check the frames, save an MP4 (diffusers' `export_to_video`) with its generation record
in a sidecar `<name>.json` (an MP4 has no text field), and show it inline."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import hub, rules
from .errors import BadVideoError, InvalidParameterError, redact
from .outputs import link_unused_name, safe_stem

TASKS = {"text-to-video": "t2v_model_id", "image-to-video": "i2v_model_id"}
MAX_START_PIXELS = rules.MAX_PIXELS  # a start frame is resized to the video size: more is a mistake or a bomb
MAX_DOWNLOAD_BYTES, DOWNLOAD_TIMEOUT_S, DOWNLOAD_DEADLINE_S = 50 * 2**20, 30, 90  # per read, in all


def pipeline_task(pipeline_class) -> str:
    """What a pipeline class makes, read from its `__call__`: a video from an image, from text, or images."""
    from .generation import accepted_arguments
    taken = accepted_arguments(pipeline_class)
    return "text-to-image" if "num_frames" not in taken else "image-to-video" if "image" in taken else "text-to-video"


def video_pipeline_class(source: str, task: str, parameter: str | None = None):
    """The diffusers class `source`'s model_index.json names, refused before reading a weight unless it makes `task`."""
    import diffusers
    parameter = parameter or TASKS[task]
    class_name = hub.read_model_index(source).get("_class_name", "")
    pipeline_class = getattr(diffusers, class_name, None) if isinstance(class_name, str) else None
    if pipeline_class is None:
        raise InvalidParameterError(parameter, source, f"its model_index.json names {class_name!r}, which is not a "
                                    f"pipeline class of diffusers {diffusers.__version__}",
                                    "Give a diffusers video model (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers).")
    made = pipeline_task(pipeline_class)
    if made != task:
        instead = {"text-to-image": "it makes images: use notebook 02 (02_load_and_generate)",
                   "text-to-video": "it makes a video from text: give it as t2v_model_id",
                   "image-to-video": "it animates a start image: give it as i2v_model_id"}[made]
        raise InvalidParameterError(parameter, source, f"{class_name} is not {'an' if task[0] == 'i' else 'a'} {task} "
                                    "pipeline", f"Here {instead}.")
    return pipeline_class


def checked_start_image(value: str, name: str = "input_image") -> str | Image.Image:
    """What diffusers' `load_image` takes, checked: a regular file's path, or an http(s) URL read with a timeout and a
    size cap into memory (no file left behind); refused above `MAX_START_PIXELS` from its header (nothing decoded)."""
    smaller = "Pass a smaller image (it is resized to the video's size anyway)."
    is_url = isinstance(value, str) and value.startswith(("http://", "https://"))
    if is_url:  # shown without user:password (`errors.redact`), query or fragment: tokens live there
        parts = urlsplit(value)
        shown = redact(parts._replace(query="***" if parts.query else "", fragment="").geturl())
        data, deadline = bytearray(), time.monotonic() + DOWNLOAD_DEADLINE_S
        try:
            # a new opener each time: urlopen's global one keeps the proxy settings of its first use
            with urllib.request.build_opener().open(value, timeout=DOWNLOAD_TIMEOUT_S) as response:
                declared = int(response.headers.get("Content-Length") or 0)
                while declared <= MAX_DOWNLOAD_BYTES >= len(data) and (chunk := response.read1(2**16)):
                    data += chunk  # read1: one read at a time, so a trickle meets the deadline below
                    if time.monotonic() > deadline:
                        raise TimeoutError
        except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts are OSErrors
            why = f"stalled: {len(data):,} bytes in {DOWNLOAD_DEADLINE_S} s" if time.monotonic() > deadline else (
                f"could not be downloaded ({type(error).__name__})")
            raise InvalidParameterError(name, shown, why,
                                        "Check the URL, or download the image and pass the file.") from None
        if declared > MAX_DOWNLOAD_BYTES or len(data) > MAX_DOWNLOAD_BYTES:
            raise InvalidParameterError(name, shown, f"is larger than {MAX_DOWNLOAD_BYTES:,} bytes", smaller)
        source = io.BytesIO(data)
    elif isinstance(value, str) and Path(value).expanduser().is_file():
        source, shown = Path(value).expanduser(), value
    else:
        raise InvalidParameterError(name, value, "needs a regular image file or an http(s) URL")
    too_big = InvalidParameterError(name, shown, f"declares more than {MAX_START_PIXELS:,} pixels", smaller)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the fix
            with Image.open(source) as image:
                pixels = image.width * image.height
    except Image.DecompressionBombError:
        raise too_big from None
    except (UnidentifiedImageError, OSError):
        raise InvalidParameterError(name, shown, "is not an image file (PNG, JPEG, WebP, ...)") from None
    if pixels > MAX_START_PIXELS:
        raise too_big
    return Image.open(io.BytesIO(data)) if is_url else str(source)


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
        raise BadVideoError("The video has NaN or infinite pixels, so it was not saved. This usually means float16 "
                            'overflowed: load with dtype="bfloat16" (or "float32" on CPU).')
    if array.max() <= 1 / 255:
        raise BadVideoError("Every frame is black, so the video was not saved. Check the dtype (float16 can "
                            "overflow to black) and the number of steps.")
    return array


def save_video(frames, output_dir: str | Path, stem: str, metadata: dict | None = None, fps: int = 16) -> Path:
    """Write `output_dir/stem.mp4` and its record `stem.json` (`outputs.link_unused_name`: never overwriting)."""
    from diffusers.utils import export_to_video
    array = check_frames(frames)
    (output_dir := Path(output_dir)).mkdir(parents=True, exist_ok=True)
    stem, temps = safe_stem(stem), []
    record = {**(metadata or {}), "video": {"container": "mp4", "fps": fps, "frames": int(array.shape[0]),
                                            "height": int(array.shape[1]), "width": int(array.shape[2])}}
    try:
        for suffix in (".mp4", ".json.tmp"):
            handle, temp = tempfile.mkstemp(prefix=f".{stem}-", suffix=suffix, dir=output_dir)
            os.close(handle)
            temps.append(temp)
        temp_video, temp_json = temps
        export_to_video(list(array), temp_video, fps=fps)
        Path(temp_json).write_text(json.dumps(record, default=str, indent=2, sort_keys=True))
        return link_unused_name(output_dir, stem, {".mp4": temp_video, ".json": temp_json})
    finally:
        for temp in temps:
            Path(temp).unlink(missing_ok=True)


def animated_gif(frames, fps: int = 16, max_side: int = 320) -> bytes:
    """The frames as a looping animated GIF, scaled down to `max_side` pixels (a light inline preview)."""
    images = [Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8)) for frame in as_array(frames)]
    scale = min(1.0, max_side / max(images[0].size))
    if scale < 1:
        size = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
        images = [image.resize(size, Image.Resampling.LANCZOS) for image in images]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0)
    return buffer.getvalue()


def show(frames=None, video: str | Path | None = None, fps: int = 16) -> None:
    """Display an animated GIF preview of `frames`, and the MP4 itself (an HTML5 <video>) when `video` is given."""
    try:
        from IPython.display import HTML, display
        from IPython.display import Image as IPythonImage
    except ImportError:
        return
    if frames is not None:
        display(IPythonImage(data=animated_gif(frames, fps), format="gif"))
    if video is not None:
        data = base64.b64encode(Path(video).read_bytes()).decode("ascii")
        display(HTML(f'<video width="480" controls autoplay loop muted playsinline>'
                     f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>'))
