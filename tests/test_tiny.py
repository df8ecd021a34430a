import subprocess
import sys

import pytest
import torch
from diffusers import AutoModel, DiffusionPipeline, QwenImageImg2ImgPipeline, QwenImageInpaintPipeline
from safetensors.torch import load_file

from tools.tiny import BUILDERS, build
from tools.tiny.tokenizers import PROMPT_WORDS, build_clip_tokenizer, build_qwen_tokenizer


@pytest.mark.parametrize("name, pipeline_class", [
    ("qwen-image", "QwenImagePipeline"),
    ("sd", "StableDiffusionPipeline"),
    ("sd-safety", "StableDiffusionPipeline"),
    ("sdxl", "StableDiffusionXLPipeline"),
])
def test_each_tiny_pipeline_loads_through_from_pretrained(tiny, name, pipeline_class):
    pipe = DiffusionPipeline.from_pretrained(tiny[name])
    assert type(pipe).__name__ == pipeline_class
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_safety_checker_only_where_asked(tiny):
    assert DiffusionPipeline.from_pretrained(tiny["sd"]).safety_checker is None
    assert DiffusionPipeline.from_pretrained(tiny["sd-safety"]).safety_checker is not None


@pytest.mark.parametrize("variant", [QwenImageImg2ImgPipeline, QwenImageInpaintPipeline])
def test_qwen_variants_load_from_the_same_folder(tiny, variant):
    assert type(variant.from_pretrained(tiny["qwen-image"])) is variant


def test_alt_vae_loads_with_automodel_and_differs(tiny):
    alt = AutoModel.from_pretrained(str(tiny["vae-alt"]))  # a Path raises TypeError in diffusers 0.42.1
    sd_vae = DiffusionPipeline.from_pretrained(tiny["sd"]).vae
    assert type(alt).__name__ == "AutoencoderKL" and alt.config.latent_channels == sd_vae.config.latent_channels
    assert not torch.equal(next(alt.parameters()), next(sd_vae.parameters()))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first = load_file(build("sd", tmp_path / "a", seed=0) / "unet" / "diffusion_pytorch_model.safetensors")
    again = load_file(build("sd", tmp_path / "b", seed=0) / "unet" / "diffusion_pytorch_model.safetensors")
    other = load_file(build("sd", tmp_path / "c", seed=1) / "unet" / "diffusion_pytorch_model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_qwen_template_prefix_is_what_the_pipeline_drops(tiny):
    pipe = DiffusionPipeline.from_pretrained(tiny["qwen-image"])
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx


def test_prompt_words_are_single_tokens():
    clip, qwen = build_clip_tokenizer(), build_qwen_tokenizer()
    for word in PROMPT_WORDS:
        assert len(clip(word, add_special_tokens=False).input_ids) == 1, word
        assert len(qwen(" " + word).input_ids) == 1, word


def test_unknown_tiny_model(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown tiny model 'dall-e'. Choose one of: " + ", ".join(BUILDERS)):
        build("dall-e", tmp_path)


def test_cli_builds_every_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tools.tiny", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tiny models ready" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(BUILDERS)
