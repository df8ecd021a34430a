import numpy as np
import pytest

from helpers import generation, loading
from helpers.errors import InvalidParameterError

COMMON = dict(prompt="a photo of a cat", negative_prompt="blurry", height=32, width=32, num_inference_steps=2,
              guidance_scale=4.0, seed=7)


@pytest.fixture(scope="module")
def pipes(tiny):
    return {name: loading.load_pipeline(str(tiny[name]), device_map=None) for name in ("sd", "qwen-image")}


def test_qwen_image_gets_true_cfg_scale(pipes):
    call = generation.call_arguments(pipes["qwen-image"], **COMMON)
    assert call["true_cfg_scale"] == 4.0 and "guidance_scale" not in call


def test_sd_gets_guidance_scale_and_drops_unknown_arguments(pipes):
    call = generation.call_arguments(pipes["sd"], **COMMON, strength=0.5)
    assert call["guidance_scale"] == 4.0 and "true_cfg_scale" not in call
    assert "strength" not in call  # text-to-image has no strength; img2img does


def test_same_seed_same_image_other_seed_other_image(pipes):
    pipe = pipes["sd"]
    first = np.asarray(pipe(**generation.call_arguments(pipe, **COMMON)).images[0], dtype=np.int16)
    again = np.asarray(pipe(**generation.call_arguments(pipe, **COMMON)).images[0], dtype=np.int16)
    other = np.asarray(pipe(**generation.call_arguments(pipe, **{**COMMON, "seed": 8})).images[0], dtype=np.int16)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1


@pytest.mark.parametrize("name, value, message", [
    ("height", 36, r"height=36 is not valid: StableDiffusionPipeline needs a positive multiple of 8. Try 32"),
    ("width", 0, r"width=0 is not valid"),
    ("height", 32.0, r"height=32.0 is not valid"),
    ("num_inference_steps", 0, r"num_inference_steps=0 is not valid: needs a whole number >= 1"),
    ("num_inference_steps", "2", r"num_inference_steps='2' is not valid"),
    ("guidance_scale", -1, r"guidance_scale=-1 is not valid"),
])
def test_bad_generation_parameters(pipes, name, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        generation.call_arguments(pipes["sd"], **{**COMMON, name: value})


def test_size_multiple_follows_the_family(pipes):
    assert generation.size_multiple(pipes["sd"]) == 8
    qwen = pipes["qwen-image"]
    assert generation.size_multiple(qwen) == max(8, qwen.vae_scale_factor * 2)
