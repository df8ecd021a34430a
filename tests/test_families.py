"""A representative subset of the family matrix through the kit's own path, in process (docs/FAMILIES.md has
every family; `make families` runs them all through the notebooks).

Each family: plan_load on its tiny folder (fits, nothing to download), plan_kwargs + the plain
DiffusionPipeline.from_pretrained, call_arguments from the pipeline's signature, a 2-step call, and a finite,
non-blank image or video. Then notebook 07 on a video family other than Wan.
"""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
from diffusers import DiffusionPipeline
from diffusers.utils import load_video
from PIL import Image

from helpers import generation, loading, planning, video
from helpers.errors import InvalidParameterError
from tools import runner
from tools.families import EXTRA, frames_for
from tools.tiny import build_families

# family -> (the kind it stands for, the guidance argument its signature takes for the kit's guidance_scale)
SUBSET = {
    "sd": ("UNet, CLIP", "guidance_scale"),
    "qwen-image": ("MMDiT, Qwen2.5-VL text encoder", "true_cfg_scale"),
    "sd3": ("MMDiT, flow matching, CLIP x2 + T5", "guidance_scale"),
    "flux": ("guidance-distilled DiT on packed latents, CLIP + T5", "guidance_scale"),
    "pixart-sigma": ("DiT, T5, needs use_resolution_binning=False at toy size", "guidance_scale"),
    "lumina2": ("next-DiT, Gemma2 text encoder", "guidance_scale"),
    "ltx-video": ("video DiT, T5", "guidance_scale"),
    "mochi": ("video, 6 frames per latent frame, T5", "guidance_scale"),
    "ltx-i2v": ("image-to-video, T5", "guidance_scale"),
}
STANDARD = {"sd", "qwen-image"}


@pytest.fixture(scope="session")
def families(tiny) -> dict:
    """The subset's tiny models, built once into .cache/tiny/families (rebuilt when the builder code changes)."""
    built = build_families(runner.TINY_DIR / "families", [name for name in SUBSET if name not in STANDARD])
    return {**{name: tiny[name] for name in STANDARD}, **built}


@pytest.mark.parametrize("family", SUBSET, ids=list(SUBSET))
def test_family_runs_through_the_kit_path(families, family):
    source = str(families[family])
    load_plan = planning.plan_load(source, "auto", dtype="float32", height=32, width=32)
    assert load_plan.fits and load_plan.download_bytes == 0 and load_plan.device == "cpu", load_plan.summary()
    pipe = DiffusionPipeline.from_pretrained(source, **loading.plan_kwargs(load_plan, source))
    pipe.set_progress_bar_config(disable=True)
    assert loading.apply_offload(pipe, load_plan).startswith("offload: none")
    task = video.pipeline_task(type(pipe))
    frames = frames_for(pipe) if task != "text-to-image" else None
    size = max(32, generation.size_multiple(pipe))
    call = generation.call_arguments(
        pipe, prompt="a red fox in the forest", negative_prompt="blurry", height=size, width=size,
        num_inference_steps=2, guidance_scale=4.0, seed=3, num_frames=frames,
        image=Image.new("RGB", (size, size), "red") if task == "image-to-video" else None,
        pipeline_kwargs=EXTRA.get(family),
    )
    guidance = SUBSET[family][1]
    assert call[guidance] == 4.0 and not {"guidance_scale", "true_cfg_scale"} - {guidance} & call.keys()
    assert ("negative_prompt" in call) == ("negative_prompt" in generation.accepted_arguments(type(pipe)))
    output = pipe(**call)
    if task == "text-to-image":
        result = np.asarray(output.images[0], dtype=np.float32) / 255
        assert result.shape == (size, size, 3)
    else:
        result = video.check_frames(output.frames[0])  # refuses NaN and all-black frames
        assert result.shape == (frames, size, size, 3)
    assert np.isfinite(result).all() and result.std() > 0.01


def test_the_frame_rule_is_the_familys_own(families):
    mochi = DiffusionPipeline.from_pretrained(families["mochi"])
    assert generation.temporal_factor(mochi) == 6
    generation.check_num_frames(mochi, 7)
    with pytest.raises(InvalidParameterError, match="MochiPipeline needs 6k \\+ 1 frames.*Try 7"):
        generation.check_num_frames(mochi, 5)  # Wan's 4k + 1 is not Mochi's rule


def test_size_multiple_is_the_vae_factor_times_the_patch(families):
    flux = DiffusionPipeline.from_pretrained(families["flux"])
    assert flux.transformer.config.patch_size == 1 and generation.patch_size(flux) == 2  # FLUX packs 2x2 itself
    sd3 = DiffusionPipeline.from_pretrained(families["sd3"])
    assert generation.patch_size(sd3) == sd3.transformer.config.patch_size == 2
    with pytest.raises(InvalidParameterError, match="height=36 is not valid: StableDiffusion3Pipeline needs a "
                       "positive multiple of 8"):
        generation.call_arguments(sd3, prompt="a cat", height=36, width=32, num_inference_steps=2,
                                  guidance_scale=4.0, seed=0)


def test_a_pipeline_kwargs_typo_names_the_argument_it_meant(families):
    pixart = DiffusionPipeline.from_pretrained(families["pixart-sigma"])
    with pytest.raises(InvalidParameterError, match="PixArtSigmaPipeline.__call__ takes no argument "
                       "'use_resolution_bining'. Did you mean 'use_resolution_binning'"):
        generation.call_arguments(pixart, prompt="a cat", height=32, width=32, num_inference_steps=2,
                                  guidance_scale=4.0, seed=0, pipeline_kwargs={"use_resolution_bining": False})


def test_video_notebook_runs_a_non_wan_family(families, tiny, tmp_path):
    """Notebook 07 on LTX-Video: text-to-video, then LTX image-to-video, both planned, classes read from the model."""
    notebook = runner.NOTEBOOKS / "07_video_pipelines.ipynb"
    start = tmp_path / "start.png"
    Image.new("RGB", (48, 40), "green").save(start)
    parameters = {**runner.headless_parameters(notebook, tiny, tmp_path / "out"), "input_image": str(start),
                  "t2v_model_id": str(families["ltx-video"]), "i2v_model_id": str(families["ltx-i2v"])}
    result = runner.execute(notebook, tmp_path / "07.ipynb", parameters)
    assert result.error is None, result.error
    text = {cell.id: "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            for cell in nbformat.read(result.executed, as_version=4).cells if cell.cell_type == "code"}
    assert "model_index.json names LTXPipeline: a text-to-video pipeline" in text["t2v-plan"]
    assert "LTXImageToVideoPipeline" in text["i2v-generate"]
    for name, pipeline in (("text-to-video", "LTXPipeline"), ("image-to-video", "LTXImageToVideoPipeline")):
        saved = tmp_path / "out" / f"{name}-seed42.mp4"
        record = json.loads(saved.with_suffix(".json").read_text())
        assert record["pipeline"] == pipeline and len(load_video(str(saved))) == record["video"]["frames"] == 5
    i2v_record = json.loads((tmp_path / "out" / "image-to-video-seed42.json").read_text())
    assert i2v_record["context"]["input_image"] == str(start)


def test_video_notebook_text_to_video_only_does_not_need_the_image_to_video_model(families, tiny, tmp_path):
    """run_image_to_video=False: i2v_model_id is not used, so a Hub id that is not cached is no error (offline)."""
    notebook = runner.NOTEBOOKS / "07_video_pipelines.ipynb"
    parameters = {**runner.headless_parameters(notebook, tiny, tmp_path / "out"), "run_image_to_video": False,
                  "t2v_model_id": str(families["ltx-video"]), "i2v_model_id": "kit-tester/never-downloaded"}
    result = runner.execute(notebook, tmp_path / "07.ipynb", parameters)
    assert result.error is None, result.error
    assert (tmp_path / "out" / "text-to-video-seed42.mp4").is_file()
    assert not list((tmp_path / "out").glob("image-to-video*"))
