"""Build a pipeline call's keyword arguments from the notebooks' parameters, read from the pipeline's own `__call__`
signature (so one set of parameters serves every family), checked before the call."""

from __future__ import annotations

import difflib
import inspect

import torch

from . import rules
from .errors import InvalidParameterError, NonFiniteLatentsError
from .outputs import likely_cause

# The names diffusers' pipelines give their one guidance strength, in the order the kit prefers them.
GUIDANCE_NAMES = ("guidance_scale", "true_cfg_scale", "distilled_guidance_scale")
# Call arguments the kit sets itself, and the parameter that sets each (refused inside pipeline_kwargs).
KIT_ARGUMENTS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "height": "height", "width": "width",
    "num_inference_steps": "num_inference_steps", "generator": "seed", "num_frames": "num_frames",
    "image": "image (input_image in the notebooks)", **{name: "guidance_scale" for name in GUIDANCE_NAMES},
}
# What each family's `encode_prompt` returns, in order, as the call arguments they fill (FLUX's text_ids: none), from
# diffusers 0.42.1's qwenimage, flux, stable_diffusion_3 and wan pipelines. Negatives: a 2nd call where it takes none.
STAGED_OUTPUTS = {"QwenImagePipeline": ("prompt_embeds", "prompt_embeds_mask"),
                  "FluxPipeline": ("prompt_embeds", "pooled_prompt_embeds", "text_ids"),
                  "StableDiffusion3Pipeline": ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                               "negative_pooled_prompt_embeds"),
                  "WanPipeline": ("prompt_embeds", "negative_prompt_embeds")}


class FiniteLatents:
    """A `callback_on_step_end` that stops denoising at the first NaN/inf latents; wraps an existing callback."""

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


def spatial_factor(pipe) -> int:
    """Pixels per latent pixel, as the pipeline itself names it (image and video pipelines differ). Kandinsky
    pipelines decode with a MoVQ (`movq`, no `vae`) and round the size up to 8 latent pixels of it: 64 pixels."""
    movq = getattr(pipe.components.get("movq"), "config", None)
    if movq is not None and "vae" not in pipe.components:
        return 8 * 2 ** (len(movq.block_out_channels) - 1)
    for name in ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor",
                 "vae_scale_factor"):
        if isinstance(getattr(pipe, name, None), int):
            return getattr(pipe, name)
    return 8


def patch_size(pipe) -> int:
    """Latent pixels per token of the denoiser: its config's `patch_size`, or 2 where the pipeline packs latents
    into 2x2 patches itself (FLUX-like pipelines, whose transformer has patch size 1)."""
    denoiser = pipe.components.get("transformer") or pipe.components.get("unet")
    patch = getattr(getattr(denoiser, "config", None), "patch_size", 1)  # an int or a (time, height, width) tuple
    patch = int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch or 1)
    return max(patch, 2) if hasattr(pipe, "_pack_latents") else patch


def size_multiple(pipe) -> int:
    """Height and width must be multiples of this: the VAE's spatial factor times the denoiser's patch size."""
    return max(8, spatial_factor(pipe) * patch_size(pipe))


def temporal_factor(pipe) -> int | None:
    """Frames per latent frame of a video pipeline's VAE (num_frames must be k * factor + 1), or None. CogVideoX's
    VAE keeps its first latent frame apart only for an odd count, so its rule is 8k + 1 (49 = 8 * 6 + 1)."""
    pairs = 2 if type(pipe.components.get("vae")).__name__ == "AutoencoderKLCogVideoX" else 1
    for name in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio", "vae_temporal_scale_factor"):
        if isinstance(getattr(pipe, name, None), int):
            return pairs * getattr(pipe, name)
    config = getattr(pipe.components.get("vae"), "config", None)
    for name in ("temporal_compression_ratio", "scale_factor_temporal"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def check_num_frames(pipe, num_frames: int) -> None:
    """A video needs `k * t + 1` frames, t = `temporal_factor` (Wan: 4): diffusers rounds other counts silently."""
    factor = temporal_factor(pipe) or 1
    name = type(pipe).__name__
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % factor:
        near = max(1, round(((num_frames if isinstance(num_frames, int) else 81) - 1) / factor) * factor + 1)
        raise InvalidParameterError(
            "num_frames", num_frames,
            f"{name} needs {factor}k + 1 frames (1, {factor + 1}, {2 * factor + 1}, ...) for its VAE",
            f"Try {near}; diffusers would round it without saying so.",
        )


def accepted_arguments(pipeline_class) -> set[str]:
    """Keyword arguments a pipeline's `__call__` takes, following `**kwargs` up to its parent classes' `__call__`."""
    accepted: set[str] = set()
    for cls in pipeline_class.__mro__:
        if "__call__" not in vars(cls):
            continue
        parameters = inspect.signature(vars(cls)["__call__"]).parameters.values()
        accepted |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return accepted - {"self"}


def guidance_argument(pipe, accepted: set[str]) -> str | None:
    """The name the pipeline takes its guidance strength under. A pipeline that takes both `guidance_scale` and
    `true_cfg_scale` (Qwen-Image, FLUX) gets `true_cfg_scale` only when its transformer is not guidance-distilled."""
    if {"guidance_scale", "true_cfg_scale"} <= accepted:
        transformer = pipe.components.get("transformer")
        distilled = getattr(getattr(transformer, "config", None), "guidance_embeds", True)
        return "guidance_scale" if distilled else "true_cfg_scale"
    return next((name for name in GUIDANCE_NAMES if name in accepted), None)


def call_arguments(pipe, *, prompt: str | None, negative_prompt: str = "", height: int, width: int,
                   num_inference_steps: int, guidance_scale: float, seed: int | None = None,
                   num_frames: int | None = None, image=None, pipeline_kwargs: dict | None = None, **extra) -> dict:
    """Checked kwargs for `pipe(**kwargs)`, with `generator=` or a CPU generator seeded with `seed`. `extra` (strength,
    mask_image, ...) is kept where the pipeline takes it; a `pipeline_kwargs` key it does not take is an error."""
    name, multiple = type(pipe).__name__, size_multiple(pipe)
    rules.size("height", height, multiple, name)
    rules.size("width", width, multiple, name)
    rules.whole("num_inference_steps", num_inference_steps, 1)
    rules.number("guidance_scale", guidance_scale, 0, fix="1 turns guidance off.")
    accepted = accepted_arguments(type(pipe))
    if pipeline_kwargs is not None and (not isinstance(pipeline_kwargs, dict)
                                        or not all(isinstance(key, str) for key in pipeline_kwargs)):
        raise InvalidParameterError("pipeline_kwargs", pipeline_kwargs, "needs a dict of call argument names to "
                                    "values", 'Example: pipeline_kwargs={"max_sequence_length": 128}.')
    for key in pipeline_kwargs or {}:
        if key in KIT_ARGUMENTS:
            raise InvalidParameterError("pipeline_kwargs", pipeline_kwargs, f"{key!r} is set by the kit",
                                        f"Use the parameter {KIT_ARGUMENTS[key]} instead.")
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=3)
            hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
            raise InvalidParameterError("pipeline_kwargs", pipeline_kwargs, f"{name}.__call__ takes no argument "
                                        f"{key!r}", f"{hint}It takes: {', '.join(sorted(accepted))}.")
    if num_frames is not None and "num_frames" in accepted:
        check_num_frames(pipe, num_frames)
    if "callback_on_step_end" in accepted:  # stop at the first NaN/inf step instead of saving a black image
        extra["callback_on_step_end"] = FiniteLatents(guidance_scale, getattr(pipe, "dtype", None),
                                                      then=extra.get("callback_on_step_end"))
    if "prompt_embeds" in extra:  # a staged plan's stage 2: the embeddings replace the prompts
        prompt, negative_prompt = None, ""
    kwargs = dict(prompt=prompt, negative_prompt=negative_prompt or None, height=height, width=width,
                  num_inference_steps=num_inference_steps, num_frames=num_frames, image=image,
                  generator=extra.pop("generator", None) or torch.Generator("cpu").manual_seed(seed), **extra)
    guidance = guidance_argument(pipe, accepted)
    if guidance is not None:
        kwargs[guidance] = guidance_scale
    kwargs = {key: value for key, value in kwargs.items() if key in accepted and value is not None}
    return {**kwargs, **dict(pipeline_kwargs or {})}


def encode_arguments(pipe, negative_prompt: str = "") -> tuple[dict, tuple[str, ...]]:
    """Stage 1 of a staged plan: (kwargs for `pipe.encode_prompt(prompt, **kwargs)` as the call passes them, the call
    argument each output fills). Without a negative_prompt kwarg, a second call's outputs fill negative_<name>."""
    name = type(pipe).__name__
    if name not in STAGED_OUTPUTS:
        raise InvalidParameterError("pipe", name, "staged: not supported for this pipeline class",
                                    f"Staged plans cover {', '.join(STAGED_OUTPUTS)}; load it in one stage.")
    accepted, call = (inspect.signature(f).parameters for f in (pipe.encode_prompt, type(pipe).__call__))
    given = {"negative_prompt": negative_prompt or None, "prompt_2": None, "prompt_3": None,
             "do_classifier_free_guidance": True}  # as the call passes them
    kwargs = {key: value for key, value in given.items() if key in accepted}
    if "max_sequence_length" in call and "max_sequence_length" in accepted:  # the call's (Wan: 512, encode: 226)
        kwargs["max_sequence_length"] = call["max_sequence_length"].default
    return kwargs, STAGED_OUTPUTS[name]

