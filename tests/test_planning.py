"""The planner: sizes against PARAMS.md (independent counts), diffusers' placement, hardware profiles, precision
rules, memory arithmetic, quantized bytes, the golden table, the notebook gate.

The golden table (tests/golden/load_plans.md) holds the plan of every shipped pipeline on every named
profile; it was reviewed by hand. Regenerate it after a deliberate change with `make golden`
(KIT_REGENERATE_GOLDEN=1), review the diff, and commit it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from bench.quant_memory import linear_weight_bytes
from helpers import architectures, env, planning, validate
from helpers.errors import (
    InvalidParameterError,
    LocalPathNotFoundError,
    ModelNotCachedOfflineError,
    PlanDoesNotFitError,
)

GIB = planning.GIB
GOLDEN = Path(__file__).parent / "golden" / "load_plans.md"
PIPELINES = [m for m in architectures.available() if (architectures.folder(m) / "model_index.json").is_file()]
QWEN, FLUX, SDXL, SD15 = ("Qwen/Qwen-Image", "black-forest-labs/FLUX.1-dev",
                          "stabilityai/stable-diffusion-xl-base-1.0", "stable-diffusion-v1-5/stable-diffusion-v1-5")


@pytest.fixture(scope="module")
def sizes():
    return {model: planning.component_sizes(model, "bfloat16") for model in PIPELINES}


# --- sizes from configs -----------------------------------------------------------------------------------

def params_md() -> dict[tuple[str, str], int]:
    rows = {}
    for line in (architectures.ROOT / "PARAMS.md").read_text().splitlines():
        match = re.match(r"\| ([\w.-]+--[\w.-]+) \| (\w+|\.) \| \w+ \| ([\d,]+) \|", line)
        if match:
            rows[(match.group(1).replace("--", "/", 1), match.group(2))] = int(match.group(3).replace(",", ""))
    return rows


def test_every_shipped_component_matches_params_md(sizes):
    expected = {key: count for key, count in params_md().items() if key[0] in PIPELINES}
    assert len(expected) == 22  # 15 image components + 7 of the two Wan video pipelines
    measured = {(model, s.name): s.params for model, rows in sizes.items() for s in rows}
    assert measured == expected


def test_diffusers_estimate_overcounts_t5_by_the_broken_tie(sizes):
    t5 = next(s for s in sizes["black-forest-labs/FLUX.1-dev"] if s.name == "text_encoder_2")
    assert t5.diffusers_bytes - t5.bytes == 131_596_288 * 2




def test_each_architecture_is_built_once_and_rebuilt_when_a_config_changes(tiny, tmp_path):
    import shutil

    first = planning.component_stats(architectures.folder(SDXL))
    assert planning.component_stats(architectures.folder(SDXL)) is first  # cached: no second build
    copy = shutil.copytree(tiny["sd"], tmp_path / "sd")
    before = planning.component_stats(copy)
    config = copy / "unet" / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    after = planning.component_stats(copy)
    assert after is not before and after == before  # rebuilt from the touched config, same architecture


def test_sizes_follow_the_dtype_asked_for(sizes):
    fp32 = {s.name: s for s in planning.component_sizes(SDXL, "fp32")}
    bf16 = {s.name: s for s in sizes[SDXL]}
    assert {n: s.bytes for n, s in fp32.items()} == {n: 2 * s.bytes for n, s in bf16.items()}
    mixed = {s.name: s.bytes for s in planning.component_sizes(SDXL, {"default": "bfloat16", "vae": "float32"})}
    assert mixed["vae"] == fp32["vae"].bytes and mixed["unet"] == bf16["unet"].bytes
    with pytest.raises(InvalidParameterError, match='"default" key'):
        planning.component_sizes(SDXL, {"vae": "float32"})


# --- placement: diffusers' own function on the kit's sizes -------------------------------------------------

def test_plan_equals_diffusers_final_device_map_for_sd15(sizes):
    """One cross-check against diffusers' whole `device_map="balanced"` path (it rebuilds every component)."""
    import diffusers
    from diffusers.pipelines import pipeline_loading_utils

    index = architectures.model_index(SD15)
    init_dict = {name: tuple(spec) for name, spec in index.items()
                 if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None}
    for budgets_gib in ([2], [1, 1], [0.5, 1.2]):  # all on one GPU; split over two; one overflow to the CPU
        budgets = planning.parse_budgets(budgets_gib)
        theirs = pipeline_loading_utils._get_final_device_map(
            "balanced", getattr(diffusers, index["_class_name"]), {}, init_dict, "diffusers", dict(budgets),
            dtype=torch.bfloat16, cached_folder=str(architectures.folder(SD15)),
        )
        assert planning.plan_balanced(sizes[SD15], budgets).diffusers_map == theirs, budgets_gib


def synthetic(sizes_gib):
    return [planning.ComponentSize(f"c{i}", "X", 0, int(g * GIB), int(g * GIB)) for i, g in enumerate(sizes_gib)]


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


# --- the LoadPlan -------------------------------------------------------------------------------------------

def render_golden() -> str:
    lines = [
        "# Load plans of the shipped architectures on every named hardware profile",
        "",
        "Generated by `tests/test_planning.py` (`make golden` rewrites it); reviewed by hand. 1024x1024 images,",
        "every choice 'auto', staged plans allowed (notebook 02's staged section runs them).",
        "VRAM: peak on the busiest GPU (weights there + activations, the kit's estimate).",
        "RAM: peak process RAM while loading (and during generation when weights are offloaded).",
        "",
        "| model | hardware | verdict | dtype | quantization | offload | device_map | VRAM GiB | RAM GiB "
        "| download GB |",
        "|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    details = []
    for model in PIPELINES:
        for name in env.PROFILES:
            plan = planning.plan_load(model, name, staged=True)
            quant = ", ".join(f"{c} {q}" for c, q in plan.quantized().items()) or "none"
            vram = f"{plan.vram_bytes / GIB:.1f}" if plan.hardware.gpus else "-"
            download = "?" if plan.download_bytes is None else f"{plan.download_bytes / 1e9:.1f}"
            lines.append(f"| {model} | {name} | {plan.verdict} | {plan.dtype} | {quant} | {plan.offload} "
                         f"| {plan.device_map} | {vram} | {plan.ram_bytes / GIB:.1f} | {download} |")
            details += ["", f"### {model} on {name}: {plan.verdict}", ""]
            details += [f"- reason: {r}" for r in plan.reasons]
            details += [f"- note: {n}" for n in plan.notes]
            details += [f"- alternative {i}: {a}" for i, a in enumerate(plan.alternatives, start=1)]
            details += [f"- {c.name}: {c.dtype}, {c.quantization}, {c.placement}, {c.bytes / GIB:.2f} GiB"
                        for c in plan.components]
    return "\n".join(lines + ["", "## Reasons, notes, alternatives and components per plan"] + details) + "\n"


def test_golden_table_of_plans():
    rendered = render_golden()
    if os.environ.get("KIT_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(rendered)
    assert GOLDEN.read_text() == rendered, "plans changed: run `make golden`, review the diff, commit it"


@pytest.mark.parametrize("profile", ["colab-t4", "kaggle-2xt4", "colab-l4", "colab-a100", "a100-80", "cpu"])
@pytest.mark.parametrize("model", [QWEN, FLUX])
def test_qwen_and_flux_are_never_fp16(model, profile):
    assert planning.plan_load(model, profile).dtype != "float16"


@pytest.mark.parametrize("model", [QWEN, FLUX])
def test_explicit_fp16_is_refused_for_unsafe_families(model):
    plan = planning.plan_load(model, "a100-80", dtype="float16")
    assert not plan.fits
    assert any("float16" in r and ("#10751" in r or "#9096" in r) for r in plan.reasons)
    assert any("let the plan choose" in a for a in plan.alternatives)


def test_qwen_on_colab_t4_within_budget_or_refused_with_alternatives():
    plan = planning.plan_load(QWEN, "colab-t4")
    assert plan.dtype == "bfloat16"  # no native bf16 on a T4, but fp16 gives black images
    if plan.fits:
        assert plan.vram_bytes <= 14.2 * GIB and plan.ram_bytes <= 12.7 * GIB
    else:
        assert plan.reasons and plan.alternatives
        assert any("model_id=" in a for a in plan.alternatives)  # a smaller family that fits


def test_sdxl_on_a_t4_is_fp16_with_the_vae_note():
    plan = planning.plan_load(SDXL, "colab-t4")
    assert plan.fits and plan.dtype == "float16" and plan.offload == "none" and plan.device_map == "cuda"
    assert plan.variant == "fp16"
    assert any("sdxl-vae-fp16-fix" in n for n in plan.notes)


def test_memory_arithmetic_by_hand():
    # SDXL on an A100-80, bf16, everything on the GPU: VRAM = 2 bytes x params + activations at 1024x1024.
    plan = planning.plan_load(SDXL, "a100-80")
    params = 123_060_480 + 694_659_840 + 2_567_463_684 + 83_653_863  # PARAMS.md
    assert plan.vram_bytes == 2 * params + int(2.5 * GIB)
    # fp16 variant files: 2 bytes per param to download; RAM while loading: base + one shard (the fp16 UNet file).
    assert plan.download_bytes == 2 * params and plan.variant == "fp16"
    assert plan.ram_bytes == int(2.5 * GIB) + 2 * 2_567_463_684


def test_quantization_shrinks_only_linear_weights_of_the_big_components():
    plan = planning.plan_load(FLUX, "a100-80", quantization="int8")
    quantized = plan.quantized()
    assert quantized == {"transformer": "int8", "text_encoder_2": "int8"}  # CLIP-L (123M) and the VAE are kept
    by = {c.name: c for c in plan.components}
    transformer = next(s for s in planning.component_stats(architectures.folder(FLUX)) if s.name == "transformer")
    assert 0.9 * transformer.params < transformer.linear_params < transformer.params
    assert by["transformer"].bytes == transformer.linear_params + 2 * (transformer.params - transformer.linear_params)
    assert by["transformer"].backend == "bitsandbytes" and by["vae"].bytes == 2 * by["vae"].params
    cpu = planning.plan_load(FLUX, "cpu", quantization="int8", alternatives=False)
    assert {c.backend for c in cpu.components if c.backend} == {"torchao"}
    nf4_cpu = planning.plan_load(SD15, "cpu", quantization="nf4", alternatives=False)
    assert not nf4_cpu.fits and any("bitsandbytes" in r for r in nf4_cpu.reasons)


def test_model_offload_puts_the_whole_model_in_ram():
    plan = planning.plan_load(FLUX, "a100-80", offload="model", alternatives=False)
    weights = sum(c.bytes for c in plan.components)
    assert plan.device_map is None
    assert plan.ram_bytes == int(2.5 * GIB) + weights
    assert plan.vram_bytes == max(c.bytes for c in plan.components) + int(2.5 * GIB)
    assert plan.offload_call == "pipe.enable_model_cpu_offload()"


def test_two_t4s_use_balanced_placement():
    plan = planning.plan_load(SDXL, "kaggle-2xt4", device_map="balanced")
    assert plan.device_map == "balanced" and plan.fits
    assert {c.placement for c in plan.components} <= {"cuda:0", "cuda:1"}


def test_cpu_refuses_a_model_bigger_than_ram_with_alternatives():
    plan = planning.plan_load(QWEN, "cpu")
    assert not plan.fits and plan.dtype == "float32"
    assert any("peak RAM" in r for r in plan.reasons)
    assert any(SD15 in a for a in plan.alternatives)
    with pytest.raises(PlanDoesNotFitError, match="Alternatives, best first"):
        planning.enforce(plan)
    planning.enforce(plan, force=True)  # forced: no error
    planning.enforce(plan, plan_only=True)  # plan_only: no error either


def test_explicit_hardware_figures_and_bad_values():
    tiny_gpu = env.resolve_hardware({"gpus": [4], "ram_gib": 8, "disk_gb": 5, "bf16": True})
    plan = planning.plan_load(SD15, tiny_gpu)
    assert plan.fits and plan.dtype == "bfloat16"
    full = planning.plan_load(SDXL, tiny_gpu, alternatives=False)
    assert not full.fits and any("free disk" in r for r in full.reasons)
    for name, value in [("hardware", "colab-t5"), ("quantization", "int3"), ("offload", "disk")]:
        with pytest.raises(InvalidParameterError, match=f"{name}="):
            planning.plan_load(SD15, **{name: value}) if name != "hardware" else planning.plan_load(SD15, value)


def test_validate_accepts_the_new_parameters_and_plans_shipped_ids_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = dict(quantization="gguf:flux1-dev-Q4_K_S.gguf", offload="group", hardware="colab-t4", plan_only=True,
                force=False, model_id=QWEN)
    validate.check(good)  # an uncached shipped id is fine when only planning
    with pytest.raises(Exception, match="model_id="):
        validate.check({**good, "plan_only": False})  # ...but not when weights are to be loaded
    for name, bad in [("quantization", "int3"), ("offload", "yes"), ("hardware", "t4"), ("plan_only", "True")]:
        namespace = {**good, name: bad}
        if name == "plan_only":
            del namespace["model_id"]  # checked first, and without plan_only=True it needs the cache
        with pytest.raises(InvalidParameterError, match=f"{name}="):
            validate.check(namespace)


def test_local_folder_plans_with_no_download(tiny):
    plan = planning.plan_load(str(tiny["sdxl"]), "colab-t4")
    assert plan.fits and plan.download_bytes == 0 and plan.variant is None




def test_plan_only_later_cells_print_why_they_are_skipped():
    skipped = planning._skip_cell(["pipe = DiffusionPipeline.from_pretrained(source)\n"])
    namespace: dict = {}
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec("".join(skipped), namespace)
    assert out.getvalue().startswith("skipped: plan_only=True") and "set plan_only=False" in out.getvalue()
    kept = ["plan_only = False\n", "planning.enforce(load_plan, plan_only=plan_only)\n"]
    assert planning._skip_cell(kept) == kept  # the cells that mention plan_only still run


def test_download_bytes_are_the_files_the_download_fetches(hub):
    """On the local Hub: the plan sizes diffusers' own selection of files (hub.weight_files)."""
    if not hasattr(planning.hub, "weight_files"):
        pytest.skip("hub.weight_files arrives with the core-hub branch")
    files = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", '
                                 b'"UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}',
             "unet/config.json": b"{}", "vae/config.json": b"{}",
             "unet/diffusion_pytorch_model.safetensors": b"u" * 4_000,
             "unet/diffusion_pytorch_model.fp16.safetensors": b"h" * 2_000,
             "vae/diffusion_pytorch_model.safetensors": b"v" * 300}  # no fp16 variant: its default file
    hub.add_files("someone/sizes", files)
    small = sum(len(v) for k, v in files.items() if k.endswith(".json"))
    assert planning.hub_download_bytes("someone/sizes", half=True) == (small + 2_000 + 300, "fp16")
    assert planning.hub_download_bytes("someone/sizes", half=False) == (small + 4_000 + 300, None)
    assert planning.hub_download_bytes("someone/sizes", half=True, gguf="gguf:unet-Q4_K.gguf") == (
        small - len(files["unet/config.json"]) + 300, "fp16")


def test_gguf_transformer_sizes_from_the_file_name_or_the_local_file(tmp_path):
    stats = {s.name: s for s in planning.component_stats(architectures.folder(FLUX))}
    named = planning.plan_load(FLUX, "a100-80", quantization="gguf:flux1-dev-Q4_K_S.gguf", alternatives=False)
    by = {c.name: c for c in named.components}
    assert by["transformer"].backend == "gguf" and by["text_encoder_2"].quantization == "none"  # GGUF: one model
    q4k = 144 / 256  # ggml's Q4_K block: 144 bytes per 256 weights
    assert by["transformer"].bytes == int(stats["transformer"].linear_params * q4k
                                          + 2 * (stats["transformer"].params - stats["transformer"].linear_params))
    other = sum(2 * s.params for name, s in stats.items() if name != "transformer")
    assert named.download_bytes == other + int(stats["transformer"].params * q4k)
    local = tmp_path / "flux-Q8_0.gguf"
    local.write_bytes(b"\0" * 123_456)
    on_disk = planning.plan_load(FLUX, "a100-80", quantization=f"gguf:{local}", alternatives=False)
    assert {c.name: c.bytes for c in on_disk.components}["transformer"] == 123_456
    assert on_disk.download_bytes == other  # the local file is not downloaded again


def test_offline_the_variant_comes_from_what_is_cached(tmp_path, monkeypatch):
    """An earlier run downloaded the fp16 files only; offline, the plan says so, and loading picks them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--someone--cached-model"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x")
    assert planning.download_bytes("someone/cached-model", [], "float16", "none") == (None, None)
    weights.rename(snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert planning.download_bytes("someone/cached-model", [], "float16", "none") == (None, "fp16")
    assert planning.download_bytes("someone/cached-model", [], "float32", "none") == (None, None)
    assert planning.download_bytes("someone/uncached-model", [], "float16", "none") == (None, None)


# --- quantized bytes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id, expected", [
    (QWEN, {"text_encoder", "transformer"}),  # Qwen2.5-VL 8.3B and the 20.4B transformer
    (FLUX, {"text_encoder_2", "transformer"}),  # T5-XXL 4.8B; CLIP-L stays
    (SDXL, {"unet"}),  # CLIP bigG (0.69B) is not big
])
def test_only_the_denoiser_and_big_text_encoders_are_quantized(model_id, expected):
    assert set(planning.plan_load(model_id, "a100-80", quantization="int8", alternatives=False).quantized()) == expected


def test_the_planning_table():
    assert planning.weight_bytes_per_param("int8", "torchao") == 1.0
    assert planning.weight_bytes_per_param("nf4", "bitsandbytes") == 0.5 + 4 / 64
    assert planning.weight_bytes_per_param("int4", "quanto") == 0.5 + 4 / 128
    assert linear_weight_bytes(64, 320, "int4", "quanto", 2) == 64 * 320 // 2 + (64 * 320 // 64) * 4 + 4
