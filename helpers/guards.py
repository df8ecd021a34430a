"""Run-time guards: turn the three failures a new user meets into messages that say what to do next.

- Out of memory while loading or generating (`torch.OutOfMemoryError`, or the CPU allocator's error):
  `out_of_memory(stage, options)`
  re-raises it with the next things to try (more offload, quantization, a smaller size).
- A gated or private repo (HTTP 401/403 from the Hub): `hub_access(model_id)` re-raises with the licence
  page, `HF_TOKEN` and `hf auth login`, and never the token itself.
- A broken image: NaN/inf latents during denoising (`FiniteLatents`, a `callback_on_step_end` that stops
  at the first bad step) and an all-black decoded image (`image_problem`, checked by `outputs.save_image`).
  Both name the likely cause (fp16 overflow, a guidance scale out of range) and the fix, so a black PNG is
  never saved as if it were a result.
"""

from __future__ import annotations

import gc
import warnings
from contextlib import contextmanager

import torch

from .errors import KitError

TYPICAL_GUIDANCE = (1.0, 30.0)  # what diffusers' pipelines are used with; far above it the latents overflow


class KitOutOfMemoryError(KitError, torch.OutOfMemoryError):
    """Out of memory, with the next options; still a torch.OutOfMemoryError for code that catches that."""


class GatedModelError(KitError, PermissionError):
    """The Hub refused the download (401/403): a gated repo whose licence is not accepted, or no/bad token."""


class NonFiniteLatentsError(KitError, FloatingPointError):
    """The denoising loop produced NaN or inf latents: the image would be black or noise."""


class BlankImageWarning(UserWarning):
    """An all-black image was saved (marked in its metadata): NaN output, or the safety checker blanked it."""


warnings.simplefilter("always", BlankImageWarning)  # every blank image is reported, not only the first

DEFAULT_OPTIONS = {
    "load": ["more offload: offload='model' (or 'group'/'sequential' when one component does not fit)",
             "quantization: quantization='int8' (half of bf16), or 'nf4'/'int4' on a GPU (a quarter)",
             "a smaller model family that fits (see the plan's alternatives)"],
    "generation": ["a smaller size: lower height/width (activations grow with the pixel count)",
                   "more offload: offload='model', and pipe.vae.enable_tiling() for the decode",
                   "fewer images per call (num_images_per_prompt=1)"],
}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA's torch.OutOfMemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return "can't allocate memory" in text or "not enough memory" in text


@contextmanager
def out_of_memory(stage: str = "load", options: list[str] | None = None):
    """Re-raise an out-of-memory error inside the block (CUDA's `torch.OutOfMemoryError`, the CPU allocator's
    RuntimeError, Python's MemoryError) as a KitOutOfMemoryError listing what to try next.

    `stage` is "load" or "generation"; `options` are the plan's next options (best first) when there is a
    plan, else the kit's general ones for that stage.
    """
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError, MemoryError) as error:
        if isinstance(error, KitOutOfMemoryError) or not _is_out_of_memory(error):
            raise
        choices = options or DEFAULT_OPTIONS.get(stage, DEFAULT_OPTIONS["load"])
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        _free_memory()
        raise KitOutOfMemoryError(
            f"Out of memory during {stage} ({first_line}). Try next, in this order:\n"
            + "\n".join(f"  {i}. {choice}" for i, choice in enumerate(choices, 1))
            + "\nRestart the kernel first if memory stays taken (del pipe; gc.collect() frees most of it)."
        ) from None


def _hub_status(error: BaseException) -> tuple[int | None, bool]:
    """(HTTP status, gated?) of a Hub error anywhere in the exception's cause/context chain."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, HfHubHTTPError):
            response = getattr(error, "response", None)
            status = getattr(response, "status_code", None)
            if isinstance(error, GatedRepoError) or status in (401, 403):
                return status, isinstance(error, GatedRepoError)
        error = error.__cause__ or error.__context__
    return None, False


def _token_present() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def gated_message(model_id: str, status: int | None, gated: bool, endpoint: str = "https://huggingface.co") -> str:
    """The message for a refused download. Names where the token goes, never the token."""
    page = f"{endpoint.rstrip('/')}/{model_id}"
    token = "a Hugging Face token was sent" if _token_present() else "no Hugging Face token was found"
    what = "is gated" if gated else "refused access"
    return (
        f"{model_id!r} {what} (HTTP {status or '401/403'}; {token}). To download it:\n"
        f"  1. Open {page} while logged in and accept the licence (access can take a while to be granted).\n"
        "  2. Give the kernel a token with read access (https://huggingface.co/settings/tokens): set the "
        "HF_TOKEN environment variable (Colab: the key icon > Secrets > HF_TOKEN, with notebook access on), "
        "or run `hf auth login` (formerly `huggingface-cli login`) in a terminal.\n"
        "  3. Restart the kernel and run again. Never paste the token into a notebook cell."
    )


@contextmanager
def hub_access(model_id: str):
    """Re-raise a 401/403 from the Hub inside the block as GatedModelError with the fix (token, licence page)."""
    try:
        yield
    except Exception as error:
        status, gated = _hub_status(error)
        if status is None and not gated:
            raise
        from huggingface_hub import constants

        raise GatedModelError(gated_message(model_id, status, gated, constants.ENDPOINT)) from None


def likely_cause(guidance_scale: float | None = None, dtype: torch.dtype | None = None) -> str:
    """The most likely reason for NaN/black output, and its fix, from the call's settings."""
    causes = []
    if guidance_scale is not None and not TYPICAL_GUIDANCE[0] / 100 <= abs(guidance_scale) <= TYPICAL_GUIDANCE[1] * 10:
        causes.append(f"guidance_scale={guidance_scale!r} is far out of range (typical {TYPICAL_GUIDANCE[0]:g}-"
                      f"{TYPICAL_GUIDANCE[1]:g}): the guided noise prediction overflows. "
                      "Fix: use a value in that range")
    if dtype == torch.float16:
        causes.append("float16 overflow (float16 tops out at 65504; Qwen-Image and FLUX overflow in it, SDXL's VAE "
                      "too). Fix: dtype='bfloat16' on GPUs that have it, float32 on a T4 or CPU, or for SDXL the "
                      "fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix)")
    if not causes:
        causes.append("an overflow in the model (float16 weights, or an extreme parameter). Fix: try "
                      "dtype='float32' (or 'bfloat16' on a GPU) and default parameters")
    return "; or ".join(causes) + "."


class FiniteLatents:
    """A `callback_on_step_end` that stops denoising at the first step whose latents hold NaN or inf.

    Wraps an existing callback (progress bars) so both run. Costs one `isfinite` per step.
    """

    def __init__(self, guidance_scale: float | None = None, dtype: torch.dtype | None = None, then=None):
        self.guidance_scale, self.dtype, self.then = guidance_scale, dtype, then

    def __call__(self, pipe, step, timestep, callback_kwargs):
        latents = callback_kwargs.get("latents")
        if isinstance(latents, torch.Tensor) and not bool(torch.isfinite(latents).all()):
            dtype = self.dtype or latents.dtype
            raise NonFiniteLatentsError(
                f"The latents became NaN/inf at denoising step {step + 1}: the image would come out black or as "
                f"noise, so nothing was saved. Likely cause: {likely_cause(self.guidance_scale, dtype)}"
            )
        if self.then is not None:
            return self.then(pipe, step, timestep, callback_kwargs)
        return callback_kwargs


def image_problem(image) -> str | None:
    """"all black" for an image whose pixels are all zero (NaN output decodes to 0), else None.

    Takes a PIL image or an array (NaN/inf in a float array is reported as such).
    """
    import numpy as np

    array = np.asarray(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return "NaN/inf pixels"
    if array.size and not array.any():
        return "all black"
    return None


def blank_image_message(problem: str, parameters: dict | None = None) -> str:
    parameters = parameters or {}
    dtype = {"float16": torch.float16}.get(str(parameters.get("dtype", "")).replace("torch.", ""))
    return (f"This image is {problem}: either the safety checker blanked it (see nsfw_content_detected), or the "
            f"pipeline produced NaN. Likely cause if NaN: {likely_cause(parameters.get('guidance_scale'), dtype)}")

