"""Build the keyword arguments of a pipeline call from the notebooks' parameters.

One `guidance_scale` parameter works for every family: SD/SDXL take `guidance_scale`; Qwen-Image
(not guidance-distilled) takes `true_cfg_scale` and warns about `guidance_scale`. Arguments the
pipeline's `__call__` does not accept are left out, so img2img/inpaint variants work too.
"""

from __future__ import annotations

import inspect

import torch

from . import rules
from .errors import NonFiniteLatentsError
from .outputs import likely_cause


def size_multiple(pipe) -> int:
    """Height and width must be multiples of this: the VAE factor, times the patch size of a transformer."""
    factor = getattr(pipe, "vae_scale_factor", 8)
    patch = 2 if "transformer" in pipe.components else 1
    return max(8, factor * patch)


def check_generation_parameters(pipe, height: int, width: int, num_inference_steps: int, guidance_scale: float) -> None:
    """Fail before the pipeline does, with a message naming the parameter and what is allowed."""
    multiple = size_multiple(pipe)
    rules.size("height", height, multiple, type(pipe).__name__)
    rules.size("width", width, multiple, type(pipe).__name__)
    rules.steps("num_inference_steps", num_inference_steps)
    rules.number("guidance_scale", guidance_scale, 0, fix="1 turns guidance off.")


def accepted_arguments(pipeline_class) -> set[str]:
    """Keyword arguments a pipeline's `__call__` takes, following `**kwargs` up to the parent classes.

    A community pipeline that wraps `super().__call__(*args, **kwargs)` accepts what its parent accepts.
    """
    accepted: set[str] = set()
    for cls in pipeline_class.__mro__:
        if "__call__" not in vars(cls):
            continue
        parameters = inspect.signature(vars(cls)["__call__"]).parameters.values()
        accepted |= {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return accepted - {"self"}


def call_arguments(
    pipe,
    *,
    prompt: str,
    negative_prompt: str = "",
    height: int,
    width: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    **extra,
) -> dict:
    """Keyword arguments for `pipe(**kwargs)`, checked, with a seeded CPU generator (reproducible on any device).

    Where the pipeline takes `callback_on_step_end`, a `FiniteLatents` check runs after each step (and
    then any callback given in `extra`): NaN/inf latents stop the call with the likely cause and the fix.
    """
    check_generation_parameters(pipe, height, width, num_inference_steps, guidance_scale)
    accepted = accepted_arguments(type(pipe))
    if "callback_on_step_end" in accepted:  # stop at the first NaN/inf step instead of saving a black image
        extra["callback_on_step_end"] = FiniteLatents(guidance_scale, getattr(pipe, "dtype", None),
                                                             then=extra.get("callback_on_step_end"))
    kwargs = dict(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        **extra,
    )
    transformer = pipe.components.get("transformer")
    distilled = getattr(getattr(transformer, "config", None), "guidance_embeds", True)
    if "true_cfg_scale" in accepted and not distilled:
        kwargs["true_cfg_scale"] = guidance_scale
    else:
        kwargs["guidance_scale"] = guidance_scale
    return {name: value for name, value in kwargs.items() if name in accepted and value is not None}


# Temporary home (core-hub branch): the families branch moves FiniteLatents here for good.
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


# TEMP until families merge: delete this block (families' call_arguments takes image, num_frames, pipeline_kwargs).
_call_arguments_before_pipeline_kwargs = call_arguments


def call_arguments(pipe, *, image=None, num_frames=None, pipeline_kwargs: dict | None = None, **parameters) -> dict:
    """As above, plus `image`/`num_frames` where the pipeline takes them, and `pipeline_kwargs`: the user's own
    call arguments, refused before the call when the pipeline does not take them."""
    from .errors import InvalidParameterError

    user = dict(pipeline_kwargs or {})
    unknown = sorted(set(user) - accepted_arguments(type(pipe)))
    if unknown:
        raise InvalidParameterError("pipeline_kwargs", pipeline_kwargs, f"{type(pipe).__name__}.__call__ takes no "
                                    f"argument {', '.join(map(repr, unknown))}", "See the pipeline's signature.")
    inputs = {name: value for name, value in (("image", image), ("num_frames", num_frames)) if value is not None}
    return {**_call_arguments_before_pipeline_kwargs(pipe, **parameters, **inputs), **user}
