"""The planner against PARAMS.md (independent counts) and against diffusers' own placement functions."""

from __future__ import annotations

import random
import re

import diffusers
import pytest
import torch
from diffusers.pipelines import pipeline_loading_utils

from helpers import architectures, planning
from helpers.errors import InvalidParameterError, LocalPathNotFoundError, ModelNotCachedOfflineError

PIPELINES = [m for m in architectures.available() if (architectures.folder(m) / "model_index.json").is_file()]
GIB = planning.GIB


def params_md() -> dict[tuple[str, str], int]:
    rows = {}
    for line in (architectures.ROOT / "PARAMS.md").read_text().splitlines():
        match = re.match(r"\| ([\w.-]+--[\w.-]+) \| (\w+|\.) \| \w+ \| ([\d,]+) \|", line)
        if match:
            rows[(match.group(1).replace("--", "/", 1), match.group(2))] = int(match.group(3).replace(",", ""))
    return rows


@pytest.fixture(scope="module")
def sizes():
    return {model: planning.component_sizes(model, "bfloat16") for model in PIPELINES}


def test_every_shipped_component_matches_params_md(sizes):
    expected = {key: count for key, count in params_md().items() if key[0] in PIPELINES}
    assert len(expected) == 22  # 15 image components + 7 of the two Wan video pipelines
    measured = {(model, s.name): s.params for model, rows in sizes.items() for s in rows}
    assert measured == expected


def test_exact_bytes_are_params_times_dtype(sizes):
    for rows in sizes.values():
        assert all(s.bytes == 2 * s.params for s in rows)
    fp32 = planning.component_sizes("stabilityai/stable-diffusion-xl-base-1.0", "float32")
    assert {s.name: s.bytes for s in fp32} == {s.name: 4 * s.params for s in fp32}


def test_diffusers_estimate_overcounts_t5_by_the_broken_tie(sizes):
    t5 = next(s for s in sizes["black-forest-labs/FLUX.1-dev"] if s.name == "text_encoder_2")
    assert t5.diffusers_bytes - t5.bytes == 131_596_288 * 2


BUDGET_GRID = [[8], [14.2, 14.2], [24], [40], [80], [10, 6], [6, 10], [3, 3], [16, 16, 16], [0.5], [30, 20, 10]]


@pytest.mark.parametrize("model", PIPELINES)
def test_plan_equals_diffusers_final_device_map(sizes, model):
    index = architectures.model_index(model)
    init_dict = {name: tuple(spec) for name, spec in index.items()
                 if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None}
    pipeline_class = getattr(diffusers, index["_class_name"])
    for budgets_gib in BUDGET_GRID:
        budgets = planning.parse_budgets(budgets_gib)
        theirs = pipeline_loading_utils._get_final_device_map(
            "balanced", pipeline_class, {}, init_dict, "diffusers", dict(budgets),
            dtype=torch.bfloat16, cached_folder=str(architectures.folder(model)),
        )
        ours = planning.plan_balanced(sizes[model], budgets).diffusers_map
        assert ours == theirs, f"{model} on {budgets_gib} GiB"


def synthetic(sizes_gib):
    return [planning.ComponentSize(f"c{i}", "X", 0, int(g * GIB), int(g * GIB)) for i, g in enumerate(sizes_gib)]


def test_placement_rule_equals_diffusers_assignment_on_random_cases():
    rng = random.Random(0)
    for _ in range(500):
        scales = [rng.choice([0.1, 0.5, 1, 2, 5, 9, 20]) for _ in range(rng.randint(1, 6))]
        components = synthetic([scale * rng.random() for scale in scales])
        budgets = planning.parse_budgets([rng.choice([2, 8, 16, 24]) for _ in range(rng.randint(1, 4))])
        ordered = dict(sorted(((c.name, c.diffusers_bytes) for c in components), key=lambda kv: kv[1], reverse=True))
        gpus = dict(sorted(budgets.items(), key=lambda kv: kv[1], reverse=True))
        mapping = pipeline_loading_utils._assign_components_to_devices(ordered, gpus)
        theirs = {component: device for device, names in mapping.items() for component in names}
        assert planning.plan_balanced(components, budgets).diffusers_map == theirs


def test_two_overflows_warn_that_diffusers_drops_one():
    plan = planning.plan_balanced(synthetic([20, 18, 1]), planning.parse_budgets([16, 16]))
    assert plan.placement == {"c0": "cpu", "c1": "cpu", "c2": 0}
    assert plan.diffusers_map == {"c2": 0, "c1": "cpu"}  # c0 is missing, as in diffusers
    assert any("c0 will be missing" in w for w in plan.warnings)
    assert sum("does not fit the GPU" in w for w in plan.warnings) == 2
    assert not plan.fits_on_gpus


def test_headroom_warning_at_high_resolution():
    tight = planning.plan_balanced(synthetic([13]), planning.parse_budgets([14]), height=1024, width=1024)
    assert any("activations at 1024x1024" in w for w in tight.warnings)
    roomy = planning.plan_balanced(synthetic([13]), planning.parse_budgets([14.5]), height=256, width=256)
    assert roomy.warnings == []


@pytest.mark.parametrize("model, gib, answer", [
    ("stabilityai/stable-diffusion-xl-base-1.0", 14.2, "one 14.2 GiB GPU (device_map='cuda')"),
    ("stabilityai/stable-diffusion-xl-base-1.0", 8, "one 8 GiB GPU with enable_model_cpu_offload()"),
    ("stabilityai/stable-diffusion-xl-base-1.0", 6, "no setup of 6 GiB GPUs"),
    ("Qwen/Qwen-Image", 78.7, "one 78.7 GiB GPU (device_map='cuda')"),
    ("Qwen/Qwen-Image", 14.2, "no setup of 14.2 GiB GPUs"),
    ("black-forest-labs/FLUX.1-dev", 26, "one 26 GiB GPU with enable_model_cpu_offload()"),
    ("black-forest-labs/FLUX.1-dev", 40, "one 40 GiB GPU (device_map='cuda')"),
])
def test_smallest_setup(sizes, model, gib, answer):
    assert planning.smallest_setup(sizes[model], gib).startswith(answer)


def test_offload_answer_also_names_the_multi_gpu_option(sizes):
    answer = planning.smallest_setup(sizes["stabilityai/stable-diffusion-xl-base-1.0"], 8)
    assert answer.endswith(" or 2 GPUs of 8 GiB (device_map='balanced')")


@pytest.mark.parametrize("bad", [[], [-1], [15, 0], ["15"], [float("nan")], "15", None, [True]])
def test_bad_budgets(bad):
    with pytest.raises(InvalidParameterError, match="gpu_memory_gib="):
        planning.parse_budgets(bad)


def test_bad_dtype_and_folders(tmp_path):
    with pytest.raises(InvalidParameterError, match="dtype='fp8'"):
        planning.component_sizes("stabilityai/stable-diffusion-xl-base-1.0", "fp8")
    with pytest.raises(LocalPathNotFoundError, match="has no model_index.json"):
        planning.component_sizes(str(tmp_path))
    with pytest.raises(ModelNotCachedOfflineError):
        planning.component_sizes("someone/uncached-model")


def test_plans_a_local_folder_offline(tiny):
    rows = planning.component_sizes(str(tiny["sdxl"]), "float32")
    assert {r.name for r in rows} == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert all(r.params > 0 for r in rows)
