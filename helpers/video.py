"""Video pipelines' output: check the frames, save an MP4 with its record beside it, show it inline.

Which pipeline, and for which task, is read from the model: `video_pipeline_class` checks the class named in
model_index.json before any weight is read. Video pipelines return `.frames[0]`: a (frames, height, width, 3)
float array in [0, 1], or a list of PIL images. diffusers' `export_to_video` writes the MP4 through imageio
and imageio-ffmpeg (the ffmpeg binary ships inside the imageio-ffmpeg wheel). An MP4 has no free-text field
like a PNG's text chunk, so the generation record (the same shape as `outputs.generation_metadata`) goes in a
sidecar `<name>.json` beside it. Saving never overwrites: a taken name gets a numbered suffix, for the pair.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import BadVideoError, InvalidParameterError
from .outputs import current_umask, safe_stem

TASKS = {"text-to-video": "t2v_model_id", "image-to-video": "i2v_model_id"}
MAX_START_PIXELS = 40_000_000  # a start frame is resized to the video's size: more than 40 MP is a mistake or a bomb
MAX_DOWNLOAD_BYTES = 50 * 2**20
DOWNLOAD_TIMEOUT_S = 30


def pipeline_task(pipeline_class) -> str:
    """What a pipeline class makes, read from its `__call__`: a video from an image, from text, or images."""
    from .generation import accepted_arguments

    accepted = accepted_arguments(pipeline_class)
    if "num_frames" not in accepted:
        return "text-to-image"
    return "image-to-video" if "image" in accepted else "text-to-video"


def video_pipeline_class(source: str, task: str, parameter: str | None = None):
    """The diffusers class named in `source`'s model_index.json, refused before any weight is read when it does
    not do `task` ("text-to-video" or "image-to-video"), with the notebook to use instead."""
    import diffusers

    from . import hub

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
        article = "an" if task.startswith("image") else "a"
        raise InvalidParameterError(parameter, source, f"{class_name} is not {article} {task} pipeline",
                                    f"Here {instead}.")
    return pipeline_class


def _shown(url: str) -> str:
    """A URL as it may be printed: no user:password, no query (tokens and signatures live there)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{'***@' if parts.username or parts.password else ''}{host}" \
           f"{f':{parts.port}' if parts.port else ''}{parts.path}{'?***' if parts.query else ''}"


def _download(url: str, name: str) -> bytes:
    """The body at `url`, with a timeout and a size cap (announced length and bytes actually read)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            declared = int(response.headers.get("Content-Length") or 0)
            data = b"" if declared > MAX_DOWNLOAD_BYTES else response.read(MAX_DOWNLOAD_BYTES + 1)
    except (OSError, ValueError) as error:  # URLError, HTTPError, timeouts are OSErrors
        raise InvalidParameterError(name, _shown(url), f"could not be downloaded ({type(error).__name__})",
                                    "Check the URL, or download the image and pass the file.") from None
    if declared > MAX_DOWNLOAD_BYTES or len(data) > MAX_DOWNLOAD_BYTES:
        raise InvalidParameterError(name, _shown(url), f"is larger than {MAX_DOWNLOAD_BYTES:,} bytes",
                                    "Pass a smaller image (it is resized to the video's size anyway).")
    return data


def read_start_image(value: str, name: str = "input_image") -> Image.Image:
    """The image-to-video start frame from a regular file or an http(s) URL, as RGB.

    The declared size is read from the header (`Image.open` decodes nothing) and refused above
    `MAX_START_PIXELS` before any pixel is decoded; a URL is fetched with a timeout and a size cap.
    """
    from PIL import UnidentifiedImageError

    is_url = isinstance(value, str) and value.startswith(("http://", "https://"))
    shown = _shown(value) if is_url else value
    if is_url:
        source = io.BytesIO(_download(value, name))
    elif isinstance(value, str) and Path(value).expanduser().is_file():
        source = Path(value).expanduser()
    else:
        raise InvalidParameterError(name, value, "needs a regular image file or an http(s) URL")
    too_big = InvalidParameterError(name, shown, f"declares more than {MAX_START_PIXELS:,} pixels",
                                    "Pass a smaller image (it is resized to the video's size anyway).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the fix
            image = Image.open(source)
    except Image.DecompressionBombError:
        raise too_big from None
    except (UnidentifiedImageError, OSError):
        raise InvalidParameterError(name, shown, "is not an image file (PNG, JPEG, WebP, ...)") from None
    if image.width * image.height > MAX_START_PIXELS:
        raise too_big
    return image.convert("RGB")


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
