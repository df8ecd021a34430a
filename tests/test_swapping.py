import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLQwenImage, StableDiffusionXLPipeline

from helpers import loading
from helpers.errors import InvalidParameterError, LocalPathNotFoundError


def other_family_vae():
    with torch.device("meta"):
        return AutoencoderKLQwenImage()


def wider_latent_vae():
    with torch.device("meta"):
        return AutoencoderKL(latent_channels=16)


def test_vae_swapped_at_load_time_is_that_object(tiny):
    vae = loading.load_component(tiny["vae-alt"])  # a pathlib.Path works (diffusers' AutoModel needs a str)
    pipe = loading.load_pipeline(tiny["sdxl"], vae=vae, device_map=None)
    assert pipe.vae is vae


def test_vae_of_another_family_is_refused_before_diffusers(tiny):
    with pytest.raises(InvalidParameterError, match=r"vae='AutoencoderKLQwenImage'.*must be of class AutoencoderKL"):
        loading.load_pipeline(str(tiny["sdxl"]), vae=other_family_vae(), device_map=None)


def test_raw_diffusers_fails_deep_inside_with_that_vae(tiny):
    """What the guard saves users from; if diffusers starts checking itself, this test says so."""
    vae = loading.load_pipeline(str(tiny["qwen-image"]), device_map=None).vae
    with pytest.raises(AttributeError, match="block_out_channels"):
        StableDiffusionXLPipeline.from_pretrained(str(tiny["sdxl"]), vae=vae)


def test_vae_with_other_latent_channels_is_refused(tiny):
    pipe = loading.load_pipeline(str(tiny["sdxl"]), device_map=None)
    with pytest.raises(InvalidParameterError, match=r"latent_channels 16 \(expected 4\)"):
        loading.check_swap(pipe, "vae", wider_latent_vae())


def test_swap_of_a_component_the_pipeline_lacks(tiny):
    pipe = loading.load_pipeline(str(tiny["sd"]), device_map=None)
    with pytest.raises(InvalidParameterError, match="has no image_encoder to replace"):
        loading.check_swap(pipe, "image_encoder", wider_latent_vae())
    with pytest.raises(InvalidParameterError, match=r"has no component 'refiner'.*Its components are: .*unet"):
        loading.load_pipeline(str(tiny["sd"]), refiner=wider_latent_vae(), device_map=None)


def test_load_component_checks_path_and_dtype(tiny):
    with pytest.raises(LocalPathNotFoundError, match="does not exist"):
        loading.load_component("./no/such/vae")
    with pytest.raises(InvalidParameterError, match="Pass dtype= instead"):
        loading.load_component(tiny["vae-alt"], torch_dtype=torch.float16)
    assert next(loading.load_component(tiny["vae-alt"], dtype="bfloat16").parameters()).dtype == torch.bfloat16
    assert type(loading.load_component(tiny["sdxl"], subfolder="vae")).__name__ == "AutoencoderKL"
