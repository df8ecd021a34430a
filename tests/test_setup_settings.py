"""helpers.setup's import-time settings and notebook 01's report, on the installed stack (needs diffusers)."""

import os
import warnings

import pytest

from helpers import env, rules, setup


def test_configure_sets_progress_bars_and_parallel_loading(monkeypatch):
    from diffusers.utils import constants
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    monkeypatch.setattr(constants, "HF_ENABLE_PARALLEL_LOADING", True)
    monkeypatch.setenv("HF_ENABLE_PARALLEL_LOADING", "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup.configure(parallel_loading=True, quiet=True)
    assert os.environ["HF_ENABLE_PARALLEL_LOADING"] == "1"
    assert are_progress_bars_disabled() and not diffusers_logging.is_progress_bar_enabled()
    setup.configure(parallel_loading=True, quiet=False)
    assert not are_progress_bars_disabled() and diffusers_logging.is_progress_bar_enabled()
    setup.configure(parallel_loading=True, quiet=True)


def test_configure_after_import_warns_that_it_has_no_effect(monkeypatch):
    from diffusers.utils import constants

    monkeypatch.setattr(constants, "HF_ENABLE_PARALLEL_LOADING", False)
    monkeypatch.setenv("HF_ENABLE_PARALLEL_LOADING", "0")
    with pytest.warns(UserWarning, match=r"HF_ENABLE_PARALLEL_LOADING='1' was set after `import diffusers`.*restart"):
        setup.configure(parallel_loading=True, quiet=True)


def test_what_fits_comes_from_the_one_planner_and_agrees_with_notebook_05():
    from helpers import planning

    gpu8 = planning.resolve_hardware({"gpus": [8], "ram_gib": 32, "disk_gb": 500, "bf16": True})
    fits = planning.what_fits(gpu8)
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    # SDXL at bf16: 6.46 GiB of weights + 2.5 GiB of activations is over 8; its 4.78 GiB UNet alone is not.
    assert "offload model" in fits[sdxl] and fits[sdxl].endswith(": fits")
    sizes = planning.component_sizes(sdxl)
    assert "enable_model_cpu_offload" in planning.smallest_setup(sizes, 8)  # notebook 05 says the same
    assert fits["stable-diffusion-v1-5/stable-diffusion-v1-5"].startswith("bfloat16, quantization none, offload none")
    assert not hasattr(env, "KNOWN_MODELS") and not hasattr(env, "what_fits")
    assert not hasattr(setup.report(), "fits")  # notebook 01 prints planning.what_fits() in its own cell


def test_token_presence_is_reported_never_its_value(monkeypatch):
    canary = "hf_CanaryTokenValue0123456789abcdefXYZ"
    assert setup.hf_token_found() is False
    monkeypatch.setenv("HF_TOKEN", canary)
    report = setup.report()
    assert report.hf_token_found is True
    text = str(report)
    assert "HF token       found" in text
    assert canary not in text and canary not in repr(report)


def test_report_lists_versions_and_pins():
    text = str(setup.report())
    assert "diffusers      0.42.1" in text
    assert "pins           all match" in text
    import torch

    here = "cuda" if torch.cuda.is_available() else "cpu"  # a CUDA host (or KIT_SIMULATE_CUDA=1) reports its GPU
    assert f"device         {here} (dtype " in text


def test_installed_stack_matches_the_pins():
    assert setup.check_pins() == []


def test_backend_minimums_are_what_the_pinned_diffusers_and_transformers_require():
    """rules.BACKENDS' "min" is the newer of diffusers' extra (Requires-Dist) and transformers' own minimum."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version
    from transformers.utils import import_utils

    packages = {setup.canonicalize_name(spec["package"]) for spec in rules.BACKENDS.values()}
    extras = {}
    for requirement in map(Requirement, metadata.requires("diffusers")):
        if setup.canonicalize_name(requirement.name) in packages:
            extras[setup.canonicalize_name(requirement.name)] = next(
                s.version for s in requirement.specifier if s.operator == ">=")
    transformers_min = {"bitsandbytes": import_utils.BITSANDBYTES_MIN_VERSION,
                        "torchao": import_utils.TORCHAO_MIN_VERSION, "gguf": import_utils.GGUF_MIN_VERSION}
    for name, spec in rules.BACKENDS.items():
        package = setup.canonicalize_name(spec["package"])
        needed = max(Version(extras[package]), Version(transformers_min.get(name, "0")))
        assert Version(spec["min"]) == needed, name
