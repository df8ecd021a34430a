"""The pipeline class of the kit's community-components example repository.

The repository's model_index.json names it: `"_class_name": ["pipeline_kit_components",
"KitComponentsPipeline"]`, and its UNet entry names custom code in `unet/kit_counting_unet.py`.
It is Stable Diffusion, plus a report of how many times the custom UNet ran.
"""

from __future__ import annotations

from diffusers import StableDiffusionPipeline


class KitComponentsPipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline that reports its custom UNet's forward calls after each generation."""

    def __call__(self, *args, **kwargs):
        before = getattr(self.unet, "forward_calls", 0)
        output = super().__call__(*args, **kwargs)
        output.unet_calls = getattr(self.unet, "forward_calls", 0) - before
        return output
