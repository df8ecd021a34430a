"""A custom UNet for the kit's community-components example: the SD UNet, counting its forward calls.

model_index.json refers to it as `"unet": ["kit_counting_unet", "KitCountingUNet2DConditionModel"]`,
and unet/config.json maps it for AutoModel in its `auto_map`.
"""

from __future__ import annotations

from diffusers import UNet2DConditionModel


class KitCountingUNet2DConditionModel(UNet2DConditionModel):
    """UNet2DConditionModel with a `forward_calls` counter (proof that the repository's code runs)."""

    forward_calls = 0

    def forward(self, *args, **kwargs):
        self.forward_calls += 1
        return super().forward(*args, **kwargs)
