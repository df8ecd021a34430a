"""Staged plans: encode with the text encoder(s) alone, free them, then denoise with text_encoder=None.

The plan's stage figures are checked by hand; each covered family's tiny pipeline makes the same image staged and
in one stage (same seed); a one-stage caller and an uncovered family are refused or planned without stages."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from helpers import generation, loading, planning
from helpers.env import GIB
from helpers.errors import InvalidParameterError
from tools import runner
from tools.tiny import build_families

COVERED = {"qwen-image": "QwenImagePipeline", "wan-t2v": "WanPipeline", "flux": "FluxPipeline",
           "sd3": "StableDiffusion3Pipeline"}


@pytest.fixture(scope="module")
def folders(tiny):
    return {**{name: tiny[name] for name in ("qwen-image", "wan-t2v")},
            **build_families(runner.TINY_DIR / "families", ["flux", "sd3"])}


def test_qwen_image_on_a_t4_fits_staged_by_the_stage_arithmetic():
    plan = planning.plan_load("Qwen/Qwen-Image", "colab-t4", staged=True)
    size = {c.name: c.bytes for c in plan.components}
    (_, vram1, _), (_, vram2, _) = plan.stages
    assert (plan.offload, plan.verdict, plan.device_map) == ("staged", "fits (staged)", "cuda")
    assert vram1 == size["text_encoder"] + GIB
    assert vram2 == size["transformer"] + size["vae"] + planning.activation_headroom(1024, 1024)
    assert plan.vram_bytes == max(vram1, vram2) <= 14.2 * GIB < sum(size.values()) + plan.activation_bytes
    assert plan.ram_bytes == max(ram for *_, ram in plan.stages) <= 12.7 * GIB
    assert "stage 2 denoise" in str(plan)
    one_stage = planning.plan_load("Qwen/Qwen-Image", "colab-t4")
    assert not one_stage.fits and "staged" in one_stage.alternatives[0]


def test_a_one_stage_caller_may_not_plan_staged_and_uncovered_families_say_so():
    with pytest.raises(InvalidParameterError, match="offload='staged'.*staged=True"):
        planning.plan_load("Qwen/Qwen-Image", "colab-t4", offload="staged")
    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    asked = planning.plan_load(sd15, "colab-t4", offload="staged", staged=True)
    assert not asked.fits and "staged: not supported for StableDiffusionPipeline" in asked.reasons[0]
    auto = planning.plan_load(sd15, "colab-t4", staged=True)
    assert auto.fits and auto.offload == "none" and any("not supported" in n for n in auto.notes)


def _call(pipe, **extra) -> np.ndarray:
    size = max(32, generation.size_multiple(pipe))
    frames = 5 if "num_frames" in generation.accepted_arguments(type(pipe)) else None
    kwargs = generation.call_arguments(pipe, prompt=None if extra else "a red fox", negative_prompt="" if extra
                                       else "blurry", height=size, width=size, num_inference_steps=2,
                                       guidance_scale=4.0, seed=0, num_frames=frames, **extra)
    out = pipe(**kwargs, output_type="np")
    return np.asarray(out.frames if hasattr(out, "frames") else out.images)


@torch.no_grad()  # as notebook 02's staged section: no autograd graph kept, the call's attention kernels
def prompt_embeddings(pipe, prompt: str, negative_prompt: str) -> dict:
    kwargs, names = generation.encode_arguments(pipe, negative_prompt)
    embeddings = dict(zip(names, pipe.encode_prompt(prompt, **kwargs), strict=True))
    if "negative_prompt" not in kwargs:  # Qwen-Image, FLUX: a second call encodes the negative
        negatives = pipe.encode_prompt(negative_prompt, **kwargs)
        embeddings |= {f"negative_{name}": value for name, value in zip(names, negatives, strict=True)}
    return embeddings


@pytest.mark.parametrize("family", sorted(COVERED))
def test_staged_and_one_stage_give_the_same_image(folders, family):
    folder = str(folders[family])
    plan = planning.plan_load(folder, "colab-t4", quantization="none", offload="staged", staged=True)
    assert plan.fits and plan.pipeline_class == COVERED[family]
    on_cpu = {"dtype": torch.float32, "device_map": None}  # the plan is for a T4; this test runs on CPU
    one_stage = DiffusionPipeline.from_pretrained(folder, **on_cpu)
    expected = _call(one_stage)
    del one_stage
    pipe_te = DiffusionPipeline.from_pretrained(folder, **{**loading.stage_kwargs(plan, folder, 1), **on_cpu})
    assert pipe_te.components.get("vae") is None and pipe_te.text_encoder is not None
    embeddings = prompt_embeddings(pipe_te, "a red fox", "blurry")
    del pipe_te
    gc.collect()
    pipe = DiffusionPipeline.from_pretrained(folder, text_encoder=None,
                                             **{**loading.stage_kwargs(plan, folder, 2), **on_cpu})
    assert all(pipe.components[n] is None for n in pipe.components if n.startswith("text_encoder"))
    staged = _call(pipe, **embeddings)
    assert staged.shape == expected.shape and np.array_equal(staged, expected)
