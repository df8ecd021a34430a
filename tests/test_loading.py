import time
import warnings

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from helpers import env, hub, loading, memory
from helpers.errors import InvalidParameterError, LocalPathNotFoundError, ModelNotCachedOfflineError


@pytest.mark.parametrize("name, expected", [
    ("float32", torch.float32), ("fp16", torch.float16), ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
    (torch.float16, torch.float16),
])
def test_resolve_dtype(name, expected):
    assert loading.resolve_dtype(name) is expected


def test_resolve_dtype_leaves_auto_to_the_plan():
    with pytest.raises(InvalidParameterError, match=r"dtype='auto' is not valid: 'auto' is decided by the load plan.*"
                       r"load_plan.resolved_dtype"):
        loading.resolve_dtype("auto")


def test_unknown_dtype_names_value_and_choices():
    with pytest.raises(InvalidParameterError, match=r"dtype='fp8' is not valid: choose one of 'auto', 'float32'"):
        loading.resolve_dtype("fp8")


def test_dtype_dict_needs_default():
    expected = r'needs a "default" key.*loads every unlisted component as float32'
    with pytest.raises(InvalidParameterError, match=expected):
        loading.resolve_dtype({"vae": "float32"})
    assert loading.resolve_dtype({"default": "bf16", "vae": "float32"}) == {
        "default": torch.bfloat16, "vae": torch.float32,
    }


@pytest.mark.parametrize("value, gpus, expected", [
    ("auto", 0, None), ("auto", 1, "cuda"), ("auto", 2, "cuda"), ("cpu", 0, "cpu"),
    ("cuda", 1, "cuda"), ("balanced", 2, "balanced"),
])
def test_resolve_device_map(value, gpus, expected):
    assert loading.resolve_device_map(value, gpu_count=gpus) == expected


@pytest.mark.parametrize("value, gpus, message", [
    ("cuda:1", 2, r"device_map='cuda:1' is not valid: a pipeline takes one of 'auto', 'cuda'.*CUDA_VISIBLE_DEVICES"),
    ({"unet": 0}, 2, r"Per-module dicts are for models"),
    ("sequential", 1, r"device_map='sequential' is not valid"),
    ("cuda", 0, r"device_map='cuda' is not valid: it needs a CUDA GPU and none is visible"),
    ("balanced", 0, r"device_map='balanced' is not valid: it needs a CUDA GPU"),
])
def test_bad_device_map(value, gpus, message):
    with pytest.raises(InvalidParameterError, match=message):
        loading.resolve_device_map(value, gpu_count=gpus)


@pytest.mark.parametrize("path", ["./models/missing", "../missing", "/abs/missing", "~/missing", "a/b/c", "x.ckpt"])
def test_missing_local_path_is_an_error_not_a_hub_lookup(path):
    with pytest.raises(LocalPathNotFoundError, match="does not exist"):
        hub.resolve_model_source(path)


def test_mistyped_folder_under_an_existing_parent_is_local(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LocalPathNotFoundError, match="'models/tyop'"):
        hub.resolve_model_source("models/tyop")


def test_folder_without_model_files(tmp_path):
    with pytest.raises(LocalPathNotFoundError, match="has no model_index.json"):
        hub.resolve_model_source(str(tmp_path))


@pytest.mark.parametrize("bad", ["", "   ", None, "bad id!!"])
def test_invalid_model_id(bad):
    with pytest.raises(InvalidParameterError, match="model_id="):
        hub.resolve_model_source(bad)


def test_uncached_hub_id_offline_fails_fast_with_the_fix():
    start = time.perf_counter()
    expected = r"model_id='Qwen/Qwen-Image' is not valid: it is not in the local Hub cache.*snapshot_download"
    with pytest.raises(ModelNotCachedOfflineError, match=expected):
        hub.resolve_model_source("Qwen/Qwen-Image")
    assert time.perf_counter() - start < 1.0


def test_uncached_hub_id_with_unreachable_hub_fails(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(ModelNotCachedOfflineError, match="cannot be reached"):
        hub.resolve_model_source("org/model")


def test_cached_hub_id_resolves_offline(isolated_hub):
    snapshot = isolated_hub / "hub" / "models--org--model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (isolated_hub / "hub" / "models--org--model" / "refs").mkdir()
    (isolated_hub / "hub" / "models--org--model" / "refs" / "main").write_text("a" * 40)
    assert hub.resolve_model_source("org/model") == "org/model"


def test_load_pipeline_returns_the_diffusers_pipeline(tiny, monkeypatch):
    monkeypatch.setattr(env, "recommended_device", lambda: "cpu")  # "auto" is for this machine: pin a CPU one
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = loading.load_pipeline(str(tiny["sd"]), dtype="auto", device_map=None)  # CPU, also on a GPU host
    assert type(pipe) is StableDiffusionPipeline
    assert set(memory.module_dtypes(pipe).values()) == {torch.float32}


def test_torch_dtype_is_refused(tiny):
    with pytest.raises(InvalidParameterError, match="Pass dtype= instead"):
        loading.load_pipeline(str(tiny["sd"]), torch_dtype=torch.float16)


def test_dtype_mix_refused_for_sd_before_loading(tiny):
    with pytest.raises(InvalidParameterError, match=r"StableDiffusionPipeline components must share one dtype"):
        loading.load_pipeline(str(tiny["sd"]), dtype={"default": "float32", "vae": "bfloat16"}, device_map=None)


def test_qwen_image_accepts_a_vae_of_another_dtype(tiny):
    pipe = loading.load_pipeline(str(tiny["qwen-image"]), dtype={"default": "bfloat16", "vae": "float32"},
                                 device_map=None)
    assert memory.module_dtypes(pipe) == {
        "vae": torch.float32, "text_encoder": torch.bfloat16, "transformer": torch.bfloat16,
    }


def test_raw_from_pipe_upcasts_the_source_and_the_guard_does_not(tiny):
    """diffusers issue 12754: if diffusers fixes it, this test tells us the guard can go."""
    raw_source = DiffusionPipeline.from_pretrained(str(tiny["sd"]), dtype=torch.bfloat16)
    StableDiffusionImg2ImgPipeline.from_pipe(raw_source)
    assert set(memory.module_dtypes(raw_source).values()) == {torch.float32}

    source = loading.load_pipeline(str(tiny["sd"]), dtype="bfloat16", device_map=None)
    variant = loading.from_pipe(StableDiffusionImg2ImgPipeline, source)
    assert set(memory.module_dtypes(source).values()) == {torch.bfloat16}
    assert set(memory.module_dtypes(variant).values()) == {torch.bfloat16}
    assert set(memory.shared_components(source, variant).values()) == {True}


def test_from_pipe_refuses_bad_input(tiny):
    pipe = loading.load_pipeline(str(tiny["sd"]), device_map=None)
    expected = r"pipe='str' is not valid: from_pipe needs a loaded diffusers pipeline"
    with pytest.raises(InvalidParameterError, match=expected):
        loading.from_pipe(StableDiffusionImg2ImgPipeline, "stable-diffusion")
    with pytest.raises(InvalidParameterError, match="from_pipe does not take a device_map"):
        loading.from_pipe(StableDiffusionImg2ImgPipeline, pipe, device_map="cuda")
    with pytest.raises(InvalidParameterError, match="Pass dtype= instead"):
        loading.from_pipe(StableDiffusionImg2ImgPipeline, pipe, torch_dtype=torch.float16)


def test_from_pipe_of_mixed_source_must_choose(tiny):
    pipe = loading.load_pipeline(str(tiny["qwen-image"]), dtype={"default": "bfloat16", "vae": "float32"},
                                 device_map=None)
    variant_class = loading.task_variant(pipe, "image2image")
    with pytest.raises(InvalidParameterError, match=r"mixed dtypes .*vae=float32.*pass dtype= to choose"):
        loading.from_pipe(variant_class, pipe)


@pytest.mark.parametrize("model, image2image, inpaint", [
    ("qwen-image", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
    ("sd", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    ("sdxl", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
])
def test_task_variants_follow_the_auto_pipeline_tables(tiny, model, image2image, inpaint):
    pipe = loading.load_pipeline(str(tiny[model]), device_map=None)
    assert loading.task_variant(pipe, "image2image").__name__ == image2image
    assert loading.task_variant(pipe, "inpaint").__name__ == inpaint


def test_task_variant_none_and_unknown_task(tiny):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = loading.load_pipeline(str(tiny["sd"]), device_map=None)
    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    assert loading.task_variant(pipe, "text2image") is StableDiffusionPipeline
    assert loading.task_variant(inpaint, "inpaint") is StableDiffusionInpaintPipeline
    with pytest.raises(InvalidParameterError, match="task='upscale'"):
        loading.task_variant(pipe, "upscale")


def test_snapshot_patterns_take_only_the_pipeline(tiny):
    patterns = hub.pipeline_file_patterns(hub.read_model_index(str(tiny["sd"])))
    assert {"model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*"} <= set(patterns["allow_patterns"])
    assert "*.fp16.*" in patterns["ignore_patterns"] and "*.onnx" in patterns["ignore_patterns"]


def test_load_pipeline_auto_takes_the_plans_dtype(tiny, monkeypatch):
    """dtype="auto" is the load plan's choice: planned for a T4 (no native bf16), an fp16-safe family gets
    float16 and Qwen-Image bfloat16 (float16 gives it black images), as notebooks get from the plan."""
    from helpers import planning

    t4 = planning.resolve_hardware("colab-t4")
    monkeypatch.setattr(planning, "resolve_hardware", lambda hardware="auto": t4)
    qwen = loading.load_pipeline(str(tiny["qwen-image"]), dtype="auto", device_map=None)
    sd = loading.load_pipeline(str(tiny["sd"]), dtype="auto", device_map=None)
    assert set(memory.module_dtypes(qwen).values()) == {torch.bfloat16}
    assert set(memory.module_dtypes(sd).values()) == {torch.float16}
