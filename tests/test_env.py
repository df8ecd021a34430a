import pytest

from helpers import env, rules
from helpers.errors import InvalidParameterError


@pytest.mark.parametrize("environ, modules, name, ci", [
    ({"COLAB_RELEASE_TAG": "release-colab_20261101"}, {}, "colab", False),
    ({}, {"google.colab": object()}, "colab", False),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {"ipykernel": object()}, "kaggle", False),
    ({}, {"ipykernel": object()}, "jupyter", False),
    ({"CI": "true"}, {}, "python", True),
    ({"CI": "false"}, {}, "python", False),
])
def test_detect_runtime(environ, modules, name, ci):
    runtime = env.detect_runtime(environ, modules)
    assert (runtime.name, runtime.ci) == (name, ci)
    assert runtime.hosted is (name in ("colab", "kaggle"))


@pytest.mark.parametrize("environ, quiet", [
    ({}, False), ({"CI": "true"}, True), ({"KIT_QUIET": "1"}, True), ({"CI": "1", "KIT_QUIET": "0"}, False),
])
def test_quiet_mode(environ, quiet):
    assert env.quiet_mode(environ) is quiet


def gpu(capability):
    return env.Accelerator(0, "GPU", 16.0, capability, capability >= (8, 0))


@pytest.mark.parametrize("device, gpus, expected", [
    ("cpu", [], "float32"),
    ("mps", [], "float16"),
    ("cuda", [gpu((7, 5))], "float16"),  # T4: no bf16
    ("cuda", [gpu((8, 0))], "bfloat16"),  # A100
    ("cuda", [gpu((8, 9)), gpu((7, 5))], "float16"),  # mixed: the weakest decides
])
def test_recommended_dtype(device, gpus, expected):
    assert env.recommended_dtype(device, gpus) == expected


def test_fp16_unsafe_families_by_pipeline_class():
    assert "#10751" in rules.fp16_unsafe("QwenImagePipeline")
    assert "#9096" in rules.fp16_unsafe(["pipeline", "FluxPipeline"])  # a repo's own code: the class decides
    assert rules.fp16_unsafe("StableDiffusionXLPipeline") == "" and rules.fp16_unsafe(None) == ""


@pytest.mark.parametrize("rule, name, value, message", [
    (rules.steps, "num_inference_steps", 1001, "is over the limit of 1000"),
    (rules.steps, "num_inference_steps", 0, "needs a whole number >= 1 and <= 1000"),
    (rules.num_frames, "num_frames", 1001, "is over the limit of 1000 frames"),
    (rules.num_frames, "num_frames", 10**9 + 1, "is over the limit of 1000 frames"),
    (rules.batch_items, "prompts", 100_001, "is over the limit of 100000"),
])
def test_upper_bounds_name_the_bound(rule, name, value, message):
    with pytest.raises(InvalidParameterError, match=f"{name}={value!r} is not valid: {message}"):
        rule(name, value)


def test_values_at_the_bounds_pass():
    rules.steps("num_inference_steps", 1000)
    rules.num_frames("num_frames", 997)  # 4k + 1 below the bound
    rules.batch_items("prompts", 100_000)


def test_hardware_names_are_the_profiles():
    assert env.HARDWARE_NAMES[0] == "auto" and set(env.HARDWARE_NAMES[1:]) == set(env.PROFILES)
    figures = env.resolve_hardware({"gpus": [15], "ram_gib": 12.7, "disk_gb": 78, "bf16": False})
    assert figures.gpus == (15.0,) and figures.disk_bytes == 78_000_000_000 and not figures.bf16
    for bad in ["colab-t5", {"gpus": [15]}, 3]:
        with pytest.raises(InvalidParameterError, match="hardware=.*choose one of 'auto', 'colab-t4'"):
            env.resolve_hardware(bad)
