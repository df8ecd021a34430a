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


def test_pipeline_kwargs_pass_through_when_the_pipeline_takes_them(pipes):
    call = generation.call_arguments(pipes["sd"], **COMMON, pipeline_kwargs={"guidance_rescale": 0.3, "eta": 0.5})
    assert call["guidance_rescale"] == 0.3 and call["eta"] == 0.5


def test_an_unknown_pipeline_kwargs_key_is_refused_with_close_matches(pipes):
    with pytest.raises(InvalidParameterError, match=r"StableDiffusionPipeline.__call__ takes no argument "
                       r"'guidance_rescal'. Did you mean 'guidance_rescale'") as refused:
        generation.call_arguments(pipes["sd"], **COMMON, pipeline_kwargs={"guidance_rescal": 0.3})
    assert refused.value.name == "pipeline_kwargs"


@pytest.mark.parametrize("key, parameter", [("generator", "seed"), ("true_cfg_scale", "guidance_scale"),
                                            ("num_inference_steps", "num_inference_steps")])
def test_a_pipeline_kwargs_key_the_kit_sets_names_the_parameter_to_use(pipes, key, parameter):
    with pytest.raises(InvalidParameterError, match=f"{key!r} is set by the kit. Use the parameter {parameter}"):
        generation.call_arguments(pipes["qwen-image"], **COMMON, pipeline_kwargs={key: 1})


@pytest.mark.parametrize("bad", [["eta", 0.5], {1: 2}, "eta=0.5"])
def test_pipeline_kwargs_must_be_a_dict_of_names(pipes, bad):
    with pytest.raises(InvalidParameterError, match="pipeline_kwargs.*needs a dict"):
        generation.call_arguments(pipes["sd"], **COMMON, pipeline_kwargs=bad)


def test_the_guidance_name_comes_from_the_signature(pipes):
    sd, qwen = pipes["sd"], pipes["qwen-image"]
    assert generation.guidance_argument(sd, generation.accepted_arguments(type(sd))) == "guidance_scale"
    assert generation.guidance_argument(qwen, generation.accepted_arguments(type(qwen))) == "true_cfg_scale"
    assert generation.guidance_argument(sd, {"distilled_guidance_scale", "prompt"}) == "distilled_guidance_scale"
    assert generation.guidance_argument(sd, {"prompt"}) is None


def test_image_pipelines_have_no_frame_rule_and_take_no_num_frames(pipes):
    assert generation.temporal_factor(pipes["sd"]) is None
    call = generation.call_arguments(pipes["sd"], **COMMON, num_frames=80)  # not a video pipeline: not passed
    assert "num_frames" not in call


def test_finite_latents_stops_at_the_first_nan_step_with_the_cause():
    import torch

    from helpers.errors import NonFiniteLatentsError

    guard = generation.FiniteLatents(guidance_scale=1e300)
    finite = {"latents": torch.zeros(2)}
    assert guard(None, 0, 0, finite) is finite
    with pytest.raises(NonFiniteLatentsError, match=r"step 3.*guidance_scale=1e\+300 is far out of range"):
        guard(None, 2, 0, {"latents": torch.tensor([0.0, float("nan")])})
    assert "float16 overflow" in generation.likely_cause(5.0, torch.float16)
