"""Broken local model folders fail before from_pretrained, naming the file and the fix."""

import json
import shutil

import pytest

from helpers import folders, validate
from helpers.errors import InvalidParameterError, LocalPathNotFoundError


@pytest.fixture()
def sd_copy(tiny, tmp_path):
    copy = tmp_path / "sd"
    shutil.copytree(tiny["sd"], copy)
    return copy


def unet_weights(folder):
    return next((folder / "unet").glob("*.safetensors"))


def test_a_good_folder_passes_and_returns_its_index(sd_copy):
    assert folders.check_pipeline_folder(sd_copy)["_class_name"] == "StableDiffusionPipeline"
    validate.check({"model_id": str(sd_copy)})


@pytest.mark.parametrize("break_it, expected", [
    (lambda f: unet_weights(f).write_bytes(unet_weights(f).read_bytes()[:1000]), "is truncated"),
    (lambda f: unet_weights(f).write_bytes(b""), "0 bytes, too short to be a safetensors file"),
    (lambda f: unet_weights(f).write_bytes(b"\x00" * 64), "not a safetensors file"),
    (lambda f: unet_weights(f).write_bytes(b"garbage!" * 64), "is truncated or not a safetensors file"),
    (lambda f: shutil.rmtree(f / "vae"), "lists 'vae' (AutoencoderKL) but vae/ is missing"),
    (lambda f: (f / "model_index.json").write_text("{not json"), "model_index.json is not valid JSON"),
    (lambda f: (f / "model_index.json").write_text("[1, 2]"), "model_index.json holds a list, not a JSON object"),
    (lambda f: (f / "model_index.json").write_text("{}"), "model_index.json has no _class_name"),
    (lambda f: (f / "unet" / "config.json").write_text(""), "config.json is not valid JSON"),
    (lambda f: unet_weights(f).unlink(), "unet/ has a config.json but no weights"),
    (lambda f: (f / "model_index.json").write_text(json.dumps({
        **json.loads((f / "model_index.json").read_text()), "_class_name": "StableDifusionPipeline"})),
     "names the pipeline class 'StableDifusionPipeline', which the installed diffusers does not have"),
    (lambda f: (f / "model_index.json").write_text(json.dumps({
        **json.loads((f / "model_index.json").read_text()), "unet": ["diffusers"]})),
     "entry 'unet' is ['diffusers'], not [library, Class]"),
])
def test_each_kind_of_damage_is_named_before_loading(sd_copy, break_it, expected):
    break_it(sd_copy)
    with pytest.raises(InvalidParameterError) as error:
        validate.check({"model_id": str(sd_copy)})
    assert expected in str(error.value)
    assert str(error.value).startswith("model_id=") and error.value.name == "model_id"
    assert any(word in error.value.fix for word in ("again", "Each component", "snapshot_download"))  # a fix


def test_a_single_file_checkpoint_gets_the_from_single_file_hint(sd_copy):
    with pytest.raises(InvalidParameterError, match="single-file checkpoint.*from_single_file"):
        validate.check({"model_id": str(unet_weights(sd_copy))})


def test_a_pipeline_folder_given_as_vae_id_points_at_its_vae(sd_copy):
    with pytest.raises(InvalidParameterError, match=r"whole pipeline folder, not a VAE\. Pass its VAE subfolder"):
        validate.check({"vae_id": str(sd_copy)})
    validate.check({"vae_id": str(sd_copy / "vae")})


def test_a_folder_without_model_index_is_not_a_pipeline(tmp_path):
    with pytest.raises(LocalPathNotFoundError, match="has no model_index.json"):
        folders.check_pipeline_folder(tmp_path)


def test_every_pipeline_class_the_tiny_models_use_is_known_and_a_typo_is_not(tiny):
    for folder in tiny.values():
        index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
        if isinstance(index.get("_class_name"), str):
            assert folders.diffusers_exports(index["_class_name"]), folder
    assert not folders.diffusers_exports("QwenImagePipelin")


def test_a_config_that_does_not_match_its_weights_is_named_in_the_plan(sd_copy):
    """diffusers would fail deep in loading and suggest ignore_mismatched_sizes (random weights): the plan,
    which builds each component from its config on the meta device, compares shapes with the file headers."""
    from helpers import planning

    config_path = sd_copy / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["latent_channels"] = config["latent_channels"] * 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(InvalidParameterError, match=r"vae/diffusion_pytorch_model.safetensors holds \S+ with shape "
                                                    r"\[.*\], but vae/config.json builds \[.*\]") as error:
        planning.plan_load(str(sd_copy), "cpu")
    assert "ignore_mismatched_sizes" in error.value.fix and error.value.name == "model_id"


def test_matching_configs_and_weights_pass_the_shape_check(tiny):
    from helpers import planning

    for name in ("sd", "qwen-image", "sdxl", "wan-t2v"):
        assert planning.component_stats(tiny[name])  # every tiny model's shapes agree with its configs


def test_an_image_conditioned_pipeline_where_a_prompt_starts_the_notebook_is_refused(sd_copy, tiny):
    safe_copy = shutil.copytree(tiny["sd-safety"], sd_copy.parent / "sd-safety")  # safety_model_id needs a checker
    for folder in (sd_copy, safe_copy):
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    with pytest.raises(InvalidParameterError, match="holds a StableDiffusionInpaintPipeline, which needs an input"):
        validate.check({"model_id": str(sd_copy)})
    validate.check({"safety_model_id": str(safe_copy)})  # only where the notebook starts from text


def test_the_pipeline_class_is_checked_only_after_the_install(sd_copy):
    """Before the install a hosted runtime's preinstalled, older diffusers would refuse a class the pinned one has."""
    index = json.loads((sd_copy / "model_index.json").read_text())
    (sd_copy / "model_index.json").write_text(json.dumps({**index, "_class_name": "PipelineOfANewerDiffusers"}))
    validate.check({"model_id": str(sd_copy)}, stage="before_install")
    with pytest.raises(InvalidParameterError, match="'PipelineOfANewerDiffusers', which the installed diffusers"):
        validate.check({"model_id": str(sd_copy)}, stage="after_install")


def test_prompt_only_classes_are_not_taken_for_image_conditioned(sd_copy):
    index = json.loads((sd_copy / "model_index.json").read_text())
    (sd_copy / "model_index.json").write_text(json.dumps({**index,
                                                           "_class_name": "StableDiffusionModelEditingPipeline"}))
    validate.check({"model_id": str(sd_copy)})
