import pytest

from helpers import env


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
