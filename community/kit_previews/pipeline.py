"""Stable Diffusion that also returns previews: the latents decoded every `preview_every` steps.

Use it to watch an image form, to pick a good step count, or to stop early. The previews come back
as `output.previews`, a list of `(step, PIL image)`, taken every `preview_every` scheduler steps and at
the last one, whose preview is the image itself.
Decoding costs one VAE pass per preview.

Load it with `DiffusionPipeline.from_pretrained(model, custom_pipeline="community/kit_previews",
trust_remote_code=True)` (a folder holding this `pipeline.py`).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline


class KitPreviewPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline whose output also carries decoded previews of the latents."""

    def decode_preview(self, latents: torch.Tensor):
        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type="pil")

    @torch.no_grad()
    def __call__(self, *args, preview_every: int = 5, num_inference_steps: int = 50, **kwargs):
        if preview_every < 1:
            raise ValueError(f"preview_every={preview_every!r} must be a whole number >= 1.")
        previews = []
        user_callback = kwargs.pop("callback_on_step_end", None)
        tensor_inputs = set(kwargs.pop("callback_on_step_end_tensor_inputs", ["latents"])) | {"latents"}

        def on_step_end(pipe, step, timestep, callback_kwargs):
            done = step + 1  # some schedulers (PNDM) take more steps than num_inference_steps
            if done % preview_every == 0 or done == pipe.num_timesteps:
                previews.append((done, self.decode_preview(callback_kwargs["latents"])[0]))
            return user_callback(pipe, step, timestep, callback_kwargs) if user_callback else callback_kwargs

        output = super().__call__(*args, num_inference_steps=num_inference_steps, callback_on_step_end=on_step_end,
                                  callback_on_step_end_tensor_inputs=sorted(tensor_inputs), **kwargs)
        output.previews = previews
        return output
