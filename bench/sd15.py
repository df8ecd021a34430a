"""An SD-1.5-sized pipeline with random weights, built from the shipped configs and saved once.

Saved in fp16 with the UNet sharded (so parallel loading has shards to read), under .cache/bench/.
"""

from __future__ import annotations

from pathlib import Path

from helpers import KIT_ROOT

ROOT = KIT_ROOT
FOLDER = ROOT / ".cache" / "bench" / "sd15-fp16"
MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def build(folder: Path = FOLDER) -> Path:
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from helpers import architectures
    from tools.tiny.tokenizers import build_clip_tokenizer

    def component(name):
        return architectures.build_component(MODEL, name, device="cpu", dtype=torch.float16)

    scheduler = PNDMScheduler.from_pretrained(architectures.folder(MODEL), subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=component("vae"), text_encoder=component("text_encoder"), tokenizer=build_clip_tokenizer(),
        unet=component("unet"), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, max_shard_size="500MB")
    return folder


def weight_files(folder: Path = FOLDER) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))
