"""Execute every notebook headless on the tiny models (papermill) and read what its cells printed.

Notebooks are discovered by globbing notebooks/, so a new one is picked up without editing this
file. Each notebook runs once per parameter set and session: the tests of one run share it (a second
run of the same path, such as an nbval re-execution, would only repeat it). Executed copies stay under
runs/<timestamp>/ for inspection, failing ones included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest
from conftest import COMPONENTS_REPO, HUB_MODELS, progress_bar_cells
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from helpers import outputs, planning
from tools import runner

NOTEBOOKS = sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb"))
CANARY = "hf_KitCanary" + "Q" * 30  # every harness run sees this HF_TOKEN; it must appear in no output
# Notebooks whose Hub cells run against the local Hub (tests/localhub.py): their real default Hub ids are
# served by it (no tiny stand-in folders), and these parameters turn their Hub sections on.
HUB_NOTEBOOKS = {"02_load_and_generate": {}, "04_community_pipelines": {"publish_to_hub": True}}
# Notebooks whose kernels get a fresh TMPDIR of their own (`scratch(result)`): they must leave it empty.
SCRATCH_CHECKED = {"04_community_pipelines"}


@pytest.fixture(scope="session")
def run_folder() -> Path:
    runner.headless_environment()
    return runner.new_run_folder(runner.RUNS)


@pytest.fixture(scope="session")
def executed(tiny, run_folder, local_hub_server):
    """Run each notebook at most once per session, on first request; HUB_NOTEBOOKS against the local Hub."""
    results: dict[str, runner.Result] = {}
    local_hub_server.tokens.add(CANARY)  # the canary token may publish, so it travels in real requests

    def run(notebook: Path, **overrides) -> runner.Result:
        key = notebook.stem + "".join(f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(str(v)).name)}"
                                      for v in overrides.values())
        if key not in results:
            environment = {"HF_TOKEN": CANARY}  # kernels get it; it must appear in no output
            if notebook.stem in SCRATCH_CHECKED:
                (run_folder / f"{key}.tmp").mkdir()
                environment["TMPDIR"] = str(run_folder / f"{key}.tmp")
            served, hub_parameters = frozenset(), {}
            if notebook.stem in HUB_NOTEBOOKS:
                environment.update(runner.hub_environment(local_hub_server.url))
                served, hub_parameters = frozenset(HUB_MODELS), HUB_NOTEBOOKS[notebook.stem]
            parameters = {**runner.headless_parameters(notebook, tiny, run_folder / key, served),
                          **hub_parameters, **overrides}
            results[key] = runner.execute(notebook, run_folder / f"{key}.ipynb", parameters, environment)
        return results[key]

    return run


def scratch(result: runner.Result) -> list[str]:
    """What the run left in its own TMPDIR (SCRATCH_CHECKED notebooks)."""
    return sorted(p.name for p in result.executed.with_suffix(".tmp").iterdir())


def outputs_by_cell(path: Path) -> dict[str, str]:
    notebook = nbformat.read(path, as_version=4)
    texts = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            texts[cell.id] = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return texts


def run_ok(executed, name: str, **overrides):
    """Run notebook `name` (once per session), require success, return the result and each cell's printed text."""
    result = executed(runner.NOTEBOOKS / name, **overrides)
    assert result.error is None, result.error
    return result, outputs_by_cell(result.executed)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_executes_headless(executed, notebook):
    result = executed(notebook)
    if result.error:
        pytest.fail(str(result.error))
    assert result.executed.is_file()


def test_load_and_generate_on_tiny_qwen_image(executed, tiny):
    notebook = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    result, text = run_ok(executed, notebook.name)
    assert "DiffusionPipeline.from_pretrained(source, dtype=torch.float32, device_map=None" in text["auto-class"]
    assert "DiffusionPipeline.from_pretrained returned a QwenImagePipeline" in text["auto-class"]
    assert "image2image: QwenImageImg2ImgPipeline, weights shared with pipe: True" in text["variants"]
    assert "inpaint: QwenImageInpaintPipeline, weights shared with pipe: True" in text["variants"]
    assert "False" not in text["variants"].split("weights shared")[1]
    for component in ("vae", "text_encoder", "transformer"):
        assert component in text["dtype-table"]
    assert "vae              torch.float32" in text["dtype-load"]
    assert "text_encoder     torch.bfloat16" in text["dtype-load"]
    assert "the same objects as pipe: True" in text["autopipe"] and "False" not in text["autopipe"]
    assert "skipped: model CPU offload (no CUDA GPU); sequential CPU offload (no CUDA GPU)" in text["summary"]
    assert "diffusers: NotImplementedError: cuda:1 not supported" in text["device"]
    assert progress_bar_cells(result.executed) == []  # the runner's kernels draw none; the lesson never asks

    defaults = papermill.inspect_notebook(str(notebook))
    prompt, seed = json.loads(defaults["prompt"]["default"]), int(defaults["seed"]["default"])
    pngs = sorted((result.executed.parent / result.executed.stem).glob("*.png"))
    assert {p.name for p in pngs} >= {f"{task}-seed{seed}.png" for task in ("text2image", "image2image", "inpaint")}
    expected_class = {"text2image": "QwenImagePipeline", "image2image": "QwenImageImg2ImgPipeline",
                      "inpaint": "QwenImageInpaintPipeline"}
    for png in pngs:
        meta = outputs.read_metadata(png)
        assert meta["parameters"]["prompt"] == prompt and meta["parameters"]["seed"] == seed
        variant = meta["context"]["variant"]
        assert meta["pipeline"] == expected_class[variant], (png.name, meta["pipeline"])  # the class that drew it
        if variant != "text2image":
            assert meta["parameters"]["strength"] == float(defaults["strength"]["default"])
            assert meta["inputs"]["image"].startswith("image ")


@pytest.mark.parametrize("family, variants, extra", [
    ("sd", ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"), {"eta": 0.5}),
    ("sdxl", ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"), {}),
])
def test_load_and_generate_handles_other_families(executed, tiny, family, variants, extra):
    """One run per family; the SD run also passes pipeline_kwargs, which reach every call and its PNG."""
    result, text = run_ok(executed, "02_load_and_generate.ipynb", model_id=str(tiny[family]), pipeline_kwargs=extra)
    for variant in variants:
        assert f"{variant}, weights shared with pipe: True" in text["variants"]
    assert "skipped: " + variants[0].removesuffix("Img2ImgPipeline") + "Pipeline needs one dtype" in text["dtype-load"]
    assert "per-component dtype (one dtype for all)" in text["summary"]
    pngs = sorted((result.executed.parent / result.executed.stem).glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        parameters = outputs.read_metadata(png)["parameters"]
        assert {name: parameters.get(name) for name in extra} == extra, png.name


def test_setup_finds_the_token_and_never_shows_it(executed):
    result, text = run_ok(executed, "01_setup.ipynb")
    assert "All pinned packages are installed at their pinned versions." in text["setup"]
    assert "pins           all match" in text["report"]
    assert "A Hugging Face token was found" in text["token"]  # the canary reached the kernel...
    assert CANARY not in result.executed.read_text()  # ...and was not printed


def test_the_token_canary_appears_in_no_output(executed, run_folder):
    for notebook in NOTEBOOKS:
        assert executed(notebook).error is None
    scanned = 0
    for path in run_folder.rglob("*"):
        if path.is_file():
            scanned += 1
            data = path.read_bytes()
            assert CANARY.encode() not in data, f"HF_TOKEN leaked into {path}"
    assert scanned >= 2 * len(NOTEBOOKS)  # executed notebooks, PNGs (with metadata) and galleries


def test_no_backend_import_noise_in_any_executed_notebook(executed):
    """diffusers imports torchao whenever it is installed; its import-time lines must not reach a lesson."""
    fragments = ["torchao/_C", "is an Enum subclass and is now natively supported", "Unable to import `torchao`",
                 "Detected no triton"]
    for notebook in NOTEBOOKS:
        result = executed(notebook)
        assert result.error is None
        text = result.executed.read_text()
        assert not [fragment for fragment in fragments if fragment in text], f"{notebook.name}: backend import noise"


def test_failing_notebook_keeps_its_executed_copy_and_names_the_cell(tmp_path):
    notebook = new_notebook(cells=[
        new_code_cell("x: int = 1  # a value", metadata={"tags": ["parameters"]}),
        new_code_cell("raise ValueError(f'boom {x}')"),
    ])
    notebook.cells[1].id = "explode"
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "broken.ipynb"
    nbformat.write(notebook, source)
    result = runner.execute(source, tmp_path / "out" / "broken.ipynb", {"x": 5, "not_declared": 1})
    assert result.error is not None
    assert "code cell 3 (id explode" in str(result.error)  # after the parameters and injected cells
    assert "ValueError: boom 5" in str(result.error)
    assert result.executed.is_file()
    assert any(o.output_type == "error" for c in nbformat.read(result.executed, as_version=4).cells
               for o in c.get("outputs", []))


def test_component_swapping_shows_its_proofs(executed):
    result, text = run_ok(executed, "03_component_swapping.ipynb")
    assert "pipe.vae is the object we passed: True" in text["vae"]
    assert "refused: vae='AutoencoderKLQwenImage'" in text["wrong"]
    assert "EulerDiscreteScheduler -> EulerAncestralDiscreteScheduler" in text["scheduler"]
    assert "StableDiffusionXLPAGPipeline: same storage per component" in text["pag"]
    assert "False" not in text["pag"] and "memory growth of from_pipe: RAM" in text["pag"]
    assert "StableDiffusionXLImg2ImgPipeline: shares weights True" in text["img2img"]
    assert "img2img sees 7 timesteps, the independent one " in text["caveat"]
    assert "the independent one 7" not in text["caveat"]
    assert "after from_pipe(sd):         unet torch.float32 vae torch.float32" in text["trap"]
    assert "after from_pipe(sd, dtype=): unet torch.bfloat16 vae torch.bfloat16" in text["trap"]
    assert "nsfw_content_detected: [" in text["safety"]
    assert "You have disabled the safety checker" in text["safety-off"]
    assert "skipped: nothing" in text["summary"]
    pngs = {p.name for p in (result.executed.parent / result.executed.stem).glob("*.png")}
    assert {"original-vae-seed42.png", "fp16-fix-vae-seed42.png", "pag-seed42.png", "img2img-seed42.png"} <= pngs
    assert progress_bar_cells(result.executed) == []


def test_component_swapping_skips_what_does_not_apply_to_qwen_image(executed, tiny):
    """Qwen-Image: the SDXL VAE, an SD scheduler and PAG do not apply; each says why, the rest runs."""
    result, text = run_ok(executed, "03_component_swapping.ipynb", model_id=str(tiny["qwen-image"]))
    assert "skipped: the VAE swap: vae='AutoencoderKL' is not valid" in text["vae"]
    assert "pipe.vae is the pipeline's own AutoencoderKLQwenImage" in text["vae"]
    assert "refused: vae='AutoencoderKL'" in text["wrong"]
    assert "skipped: scheduler='EulerAncestralDiscreteScheduler' is not in FlowMatchEulerDiscreteScheduler" in text[
        "scheduler"]
    assert "skipped: diffusers has no PAG pipeline for QwenImagePipeline" in text["pag"]
    assert "QwenImageImg2ImgPipeline: shares weights True" in text["img2img"]
    summary = text["summary"].split("skipped: ", 1)[1]
    assert "VAE swap" in summary and "scheduler swap" in summary and "PAG" in summary
    pngs = {p.name for p in (result.executed.parent / result.executed.stem).glob("*.png")}
    assert {"own-vae-seed42.png", "img2img-seed42.png", "safety-checker-on-seed42.png"} <= pngs
    assert "pag-seed42.png" not in pngs


def test_multi_gpu_notebook_plans_and_renders_in_parallel(executed):
    notebook = runner.NOTEBOOKS / "05_multi_gpu_balanced.ipynb"
    result, text = run_ok(executed, notebook.name)
    assert "component" in text["sizes"] and "total" in text["sizes"]
    assert "GPU 0: [" in text["plan"] and "Smallest setup" in text["plan"]
    assert "== Qwen/Qwen-Image on 2x T4" in text["reference"]
    assert "Skipped: device_map='balanced' needs two or more GPUs" in text["balanced"]
    prompts = json.loads(json.dumps(eval(papermill.inspect_notebook(str(notebook))["prompts"]["default"])))
    assert f"{len(prompts)} images from 2 processes" in text["data-parallel"]
    for index, prompt in enumerate(prompts):
        assert text["data-parallel"].count(f"prompt {index} by process") == 1
        assert repr(prompt) in text["data-parallel"]


def test_form_is_displayed_at_the_end_of_load_and_generate(executed):
    result, _ = run_ok(executed, "02_load_and_generate.ipynb")
    form = next(c for c in nbformat.read(result.executed, as_version=4).cells if c.get("id") == "form")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in form.outputs)


def test_community_notebook_audits_before_each_load(executed):
    result, text = run_ok(executed, "04_community_pipelines.ipynb")
    assert scratch(result) == []  # the workspace (components repo, tampered copy, Hub snapshot) is gone
    for cell in ("file", "folder", "repo-load", "component"):
        assert "diffusers will execute" in text[cell] and "sha256" in text[cell], cell
    assert "fox token scaled by 1.500; largest change elsewhere 0.0e+00" in text["weights"]
    assert "KitPreviewPipeline: shares weights True" in text["folder"]
    assert "model_index.json now names ['pipeline_kit_components', 'KitComponentsPipeline']" in text["publish"]
    assert "after save_pretrained, .py files: none" in text["publish"]
    assert "KitComponentsPipeline with KitCountingUNet2DConditionModel" in text["repo-load"]
    assert "refused: Remote code differs from the pinned manifest" in text["tamper"]
    assert "refused: DIFFUSERS_DISABLE_REMOTE_CODE is set" in text["disable"]


def test_video_notebook_quantizes_through_its_plan(executed):
    """quantization="int8" on this CPU (torchao): the plan quantizes the transformer and 07's literal
    from_pretrained(**load_kwargs) loads it quantized, then generates."""
    result, text = run_ok(executed, "07_video_pipelines.ipynb", quantization="int8", run_image_to_video=False)
    assert re.search(r"transformer:? int8", text["t2v-plan"])
    assert "transformer" in text["t2v-load"].split("quantized as loaded: ")[1].splitlines()[0]
    assert "frames: " in text["t2v-generate"]


def test_video_notebook_writes_mp4s_with_their_records(executed, run_folder):
    result, text = run_ok(executed, "07_video_pipelines.ipynb")
    folder = run_folder / "07_video_pipelines"
    videos = [folder / "image-to-video-seed42.mp4", folder / "text-to-video-seed42.mp4"]  # nbval may add "-1" copies
    assert all(path.is_file() for path in videos)
    from diffusers.utils import load_video

    declared = papermill.inspect_notebook(str(result.notebook))
    prompt = json.loads(declared["prompt"]["default"])
    for path, pipeline in zip(videos, ("WanImageToVideoPipeline", "WanPipeline"), strict=True):
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["pipeline"] == pipeline and record["parameters"]["prompt"] == prompt
        assert len(load_video(str(path))) == record["parameters"]["num_frames"] == record["video"]["frames"]
    assert "refused: num_frames=6 is not valid: WanPipeline needs 4k + 1 frames" in text["t2v-frames"]
    assert "refused: The video has NaN" in text["guards"]
    assert "offload: none" in text["t2v-load"] and "model_index.json names WanPipeline" in text["t2v-plan"]
    preview = next(c for c in nbformat.read(result.executed, as_version=4).cells if c.get("id") == "t2v-show")
    assert {"image/gif", "text/html"} <= {key for o in preview.outputs for key in o.get("data", {})}


def test_community_notebook_assembles_from_components_and_shows_the_broken_forms(executed):
    _, text = run_ok(executed, "04_community_pipelines.ipynb")
    assert text["assemble-audit"].count("sha256") == 3 and "importing runs 3 code file(s)" in text["assemble-audit"]
    assert "KitRecordingDPMSolverScheduler" in text["assemble-load"] and "KitCountingUNet2DConditionModel" in text[
        "assemble-load"]
    assert "diffusers: TypeError:" in text["assemble-wrong"] and "the kit: device_map='cuda' is not valid" in text[
        "assemble-wrong"]
    assert "custom UNet ran" in text["assemble-build"] and "kept in float32: []" not in text["assemble-build"]
    assert "the kit, before any code ran: device_map='cuda'" in text["from-pipe-device"]
    assert "unexpected keyword argument 'device_map'" in text["from-pipe-device"]


def test_load_notebook_shows_the_seed_dtype_dict_failing_and_explains_sequential_offload(executed):
    _, text = run_ok(executed, "02_load_and_generate.ipynb")
    assert "the kit, before loading: dtype=" in text["dtype-seed"]
    assert "the first call failed: RuntimeError: mat1 and mat2 must have the same dtype" in text["dtype-seed"]
    assert "sequential offload is not run" in text["sequential"] or "sequential CPU offload; peak VRAM" in text[
        "sequential"]


def test_batch_notebook_resumes_and_repairs(executed):
    notebook = runner.NOTEBOOKS / "06_batch_generation.ipynb"
    result, text = run_ok(executed, notebook.name)
    defaults = papermill.inspect_notebook(str(notebook))
    count = len(eval(defaults["prompts"]["default"])) * int(defaults["seeds_per_prompt"]["default"])
    assert f"seeds: {count} items, 0 already in" in text["plan"]
    assert f"{count} images in" in text["run"] and "from 2 process(es)" in text["run"]
    assert f"skipped 0 already done, regenerated 0; {count} items" in text["run"]
    assert "again:    0 images in" in text["resume"] and f"skipped {count} already done" in text["resume"]
    assert "repaired: 2 images in" in text["resume"]
    assert f"skipped {count - 2} already done, regenerated 2" in text["resume"]
    assert f"{count} manifest lines for this batch, {count} distinct ids" in text["gallery"]
    assert "largest pixel difference 0" in text["one-item"]
    folder = result.executed.parent / result.executed.stem
    assert len(list(folder.glob("*.png"))) == count


def test_community_notebook_runs_its_hub_paths_against_the_local_hub(executed, local_hub_server):
    """Notebook 04 with its real default ids, served by the local Hub: by name, publish, load back, pin."""
    result, text = run_ok(executed, "04_community_pipelines.ipynb")
    assert "skipped" not in text["name"]  # the by-name pipeline came from the mirror dataset
    published = re.search(r"published kit-tester/kit-components at commit ([0-9a-f]{40})", text["hub-publish"])
    assert published and local_hub_server.repo("kit-tester/kit-components").at(published[1]) is not None
    assert f"KitComponentsPipeline from kit-tester/kit-components at {published[1][:10]}" in text["hub-load"]
    assert "diffusers will execute 2 code file(s)" in text["hub-load"]
    listing = text["hub-load"].split("snapshot_download -> ")[1]
    assert "model_index.json" in listing and "unet" in listing and "pipeline_kit_components.py" in listing
    assert "-> KitPreviewPipeline, previews at steps [" in text["hub-pipeline"]
    assert "refused: custom_revision='main' is not valid" in text["hub-pipeline"]
    pngs = {p.name for p in (result.executed.parent / result.executed.stem).glob("*.png")}
    assert {"community-by-name-seed42.png", "components-from-hub-seed42.png", "previews-from-hub-seed42.png"} <= pngs
    asked = {path for _, path, _ in local_hub_server.requests}
    assert any(path.endswith("/lpw_stable_diffusion.py") for path in asked)  # by name, from the mirror
    assert local_hub_server.offbox == []  # nothing tried to reach PyPI or huggingface.co


def test_load_and_generate_downloads_its_real_default_through_the_local_hub(executed, local_hub_server):
    """Notebook 02 keeps model_id="Qwen/Qwen-Image": the local Hub serves it and the snapshot_download cell runs."""
    result, text = run_ok(executed, "02_load_and_generate.ipynb")
    assert "Qwen/Qwen-Image is in " in text["local"]
    assert "files of Qwen/Qwen-Image match the Hub's" in text["local"]  # checked against the Hub's sha256 first
    folder = Path(text["local"].split("Qwen/Qwen-Image is in ", 1)[1].strip())
    assert (folder / "model_index.json").is_file() and (folder / "transformer").is_dir()
    assert any(p.startswith("/api/models/Qwen/Qwen-Image/tree/") for _, p, _ in local_hub_server.requests)


def test_community_notebook_takes_a_folder_as_community_pipeline_and_a_hub_components_repo(executed,
                                                                                           local_hub_server):
    """The documented folder form of `community_pipeline`: the weighting checks say why they skip; the rest runs.
    In the same run, components_repo is a Hub id pinned at a commit: loaded, its component alone, and the
    tampered copy (made from its code at that commit) refused."""
    pin = local_hub_server.pinned["components"]
    result, text = run_ok(executed, "04_community_pipelines.ipynb", community_pipeline="community/kit_previews",
                          components_repo=COMPONENTS_REPO, revision=pin)
    assert "loaded KitPreviewPipeline" in text["file"]
    assert "skipped: these checks need community/kit_prompt_weighting.py" in text["weights"]
    assert "fox token scaled" not in text["weights"]
    assert "KitPreviewPipeline: shares weights True" in text["folder"]
    assert "KitComponentsPipeline with KitCountingUNet2DConditionModel: the UNet ran" in text["repo-load"]
    assert "KitCountingUNet2DConditionModel" in text["component"]
    assert "refused: Remote code differs from the pinned manifest" in text["tamper"]
    assert f"skipped: {COMPONENTS_REPO} is already a Hub repository" in text["hub-publish"]
    pngs = {p.name for p in (result.executed.parent / result.executed.stem).glob("*.png")}
    assert "custom-pipeline-seed42.png" in pngs and "weighted-seed42.png" not in pngs


def test_community_notebook_takes_the_weighting_pipeline_as_a_folder_and_a_plain_components_repo(
        executed, tiny, tmp_path_factory):
    """A folder whose pipeline.py weights prompts: its checks run, and the kit's previews folder (also
    pipeline.py) still loads after it in the same kernel. In the same run, a plain pipeline folder as
    components_repo: said, rendered under an honest label, and the code-only cells skip with their reason."""
    folder = tmp_path_factory.mktemp("folder-form") / "my_weighting"
    folder.mkdir()
    (folder / "pipeline.py").write_text((runner.ROOT / "community" / "kit_prompt_weighting.py").read_text())
    result, text = run_ok(executed, "04_community_pipelines.ipynb", community_pipeline=str(folder),
                          components_repo=str(tiny["sd"]))
    assert "loaded KitPromptWeightingPipeline" in text["file"]
    assert "fox token scaled by 1.500" in text["weights"]
    assert "KitPreviewPipeline: shares weights True" in text["folder"]
    assert "diffusers will execute 0 code file(s)" in text["repo-load"]
    assert f"note: {tiny['sd']} holds no custom code" in text["repo-load"]
    assert "StableDiffusionPipeline with UNet2DConditionModel\n" in text["repo-load"]
    assert "skipped: " in text["component"] and "skipped: " in text["tamper"]
    assert "StableDiffusionPipeline from kit-tester/kit-components at " in text["hub-load"]
    pngs = {p.name for p in (result.executed.parent / result.executed.stem).glob("*.png")}
    assert "plain-repo-seed42.png" in pngs and "community-components-seed42.png" not in pngs


def run_04(tmp_path: Path, tiny, environment: dict, notebook: Path = runner.NOTEBOOKS / "04_community_pipelines.ipynb"):
    """Notebook 04 (or a copy) offline on the tiny models, its kernel with a fresh TMPDIR; returns (result, TMPDIR)."""
    runner.headless_environment()
    scratch_dir = tmp_path / "tmp"
    scratch_dir.mkdir()
    parameters = runner.headless_parameters(runner.NOTEBOOKS / "04_community_pipelines.ipynb", tiny, tmp_path / "out")
    result = runner.execute(notebook, tmp_path / "executed.ipynb", parameters,
                            {**environment, "TMPDIR": str(scratch_dir)})
    return result, scratch_dir


def test_community_notebook_refuses_an_unwritable_hf_home_before_loading(tiny, tmp_path):
    """diffusers would fail 17 frames deep copying the code into HF_HOME/modules; the kit says it in one line."""
    result, scratch_dir = run_04(tmp_path, tiny, {"HF_HOME": "/sys/kit-hf-home"})  # /sys: not writable, even by root
    assert result.error is not None and "(id file:" in result.error.cell
    assert result.error.error.startswith("FolderNotWritableError: HF_HOME='/sys/kit-hf-home' is not valid: cannot be "
                                         "written (Permission denied): diffusers copies custom code into")
    cell = next(c for c in nbformat.read(result.executed, as_version=4).cells if c.get("id") == "file")
    assert [len(o.traceback) for o in cell.outputs if o.output_type == "error"] == [1]  # the message, no frames
    assert not any(scratch_dir.iterdir())


def test_community_notebook_removes_its_scratch_copies_when_a_later_cell_fails(tiny, tmp_path):
    notebook = nbformat.read(runner.NOTEBOOKS / "04_community_pipelines.ipynb", as_version=4)
    after_tamper = next(i for i, c in enumerate(notebook.cells) if c.get("id") == "tamper") + 1
    notebook.cells.insert(after_tamper, new_code_cell(
        "assert len(list(Path(workspace.name).iterdir())) == 3  # components repo, its manifest, tampered copy\n"
        "raise RuntimeError('a later cell fails')"))
    copy = tmp_path / "04_fails_late.ipynb"  # `helpers` is installed in the venv, community paths resolve from the kit
    nbformat.write(notebook, copy)
    result, scratch_dir = run_04(tmp_path, tiny, {}, notebook=copy)
    assert result.error is not None and "RuntimeError: a later cell fails" in result.error.error
    assert not any(scratch_dir.iterdir())


def test_load_and_generate_runs_a_staged_plan_and_skips_the_one_stage_sections(executed, tiny):
    """offload='staged' with force=True: on this CPU a staged plan does not fit (it needs a GPU) but runs as planned,
    and draws the image the one-stage default run drew (same tiny Qwen-Image, prompt and seed)."""
    result, text = run_ok(executed, "02_load_and_generate.ipynb", model_id=str(tiny["qwen-image"]),
                          offload="staged", force=True)
    assert "transformer=None" in text["staged-encode"] and "vae=None" in text["staged-encode"]
    assert "QwenImagePipeline.encode_prompt(prompt, **{'max_sequence_length': 512}) -> prompt_embeds torch.Size([1," \
        in text["staged-encode"]
    assert "negative_prompt_embeds_mask" in text["staged-encode"]
    assert "prompt_embeds=tensor(" in text["staged-denoise"] and "prompt='" not in text["staged-denoise"]
    for cell in ("auto-class", "generate", "variants", "device", "form"):
        assert text[cell] == planning.SKIPPED_STAGED + "\n", cell
    assert "stage 1 done: the text encoders are freed" in text["staged-encode"]
    assert "skipped: sections 2 to 8 (they load in one stage; this plan is staged)" in text["summary"]
    staged = result.executed.parent / result.executed.stem
    one_stage, _ = run_ok(executed, "02_load_and_generate.ipynb")
    png = next(staged.glob("staged-seed*.png"))
    expected = one_stage.executed.parent / one_stage.executed.stem / png.name.replace("staged", "text2image")
    assert list(Image.open(png).getdata()) == list(Image.open(expected).getdata())
    assert outputs.read_metadata(png)["context"]["prompt"] == outputs.read_metadata(expected)["parameters"]["prompt"]
