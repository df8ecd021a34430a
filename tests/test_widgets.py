import numpy as np
import pytest
from PIL import Image

from helpers import generation, loading, outputs, widgets


@pytest.fixture(scope="module")
def pipe(tiny):
    return loading.load_pipeline(tiny["sd"], device_map=None)


def test_form_generates_what_the_same_call_generates(pipe, tmp_path):
    form = widgets.GenerationForm(pipe, output_dir=str(tmp_path), prompt="a cat", num_inference_steps=2,
                                  guidance_scale=4.0, seed=3, size=(32, 32))
    form.prompt.value = "a red fox"
    form.seed.value = 11
    form.generate_button.click()  # the same handler a click in the browser runs
    assert "Done: seed 11" in form.status.value
    expected = pipe(**generation.call_arguments(pipe, prompt="a red fox", height=32, width=32,
                                                num_inference_steps=2, guidance_scale=4.0, seed=11)).images[0]
    assert np.array_equal(np.asarray(form.image), np.asarray(expected))
    assert form.progress.value == form.progress.max == 2
    assert len(form.output.outputs) == 1  # the image is shown in the form


def test_save_writes_the_parameters_and_random_seed_changes_the_seed(pipe, tmp_path):
    form = widgets.GenerationForm(pipe, output_dir=str(tmp_path), prompt="a cat", num_inference_steps=2, seed=5,
                                  size=(32, 32))
    assert form.save_button.disabled
    form.generate()
    form.save_button.click()
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1 and "Saved" in form.status.value
    meta = outputs.read_metadata(saved[0])
    assert (meta["parameters"]["prompt"], meta["parameters"]["seed"], meta["parameters"]["width"]) == ("a cat", 5, 32)
    assert meta["context"]["source"] == "generation_form" and meta["pipeline"] == "StableDiffusionPipeline"
    assert "callback_on_step_end" not in meta["parameters"]
    seeds = set()
    for _ in range(5):
        form.random_seed.click()
        seeds.add(form.seed.value)
    assert len(seeds) > 1


def test_errors_show_in_the_form_instead_of_vanishing(pipe):
    form = widgets.GenerationForm(pipe, prompt="a cat", num_inference_steps=2, size=(32, 32))
    form.save_button.click()
    assert "RuntimeError: Nothing to save yet" in form.status.value
    form.size.options = [("30 x 30", (30, 30))]
    form.generate_button.click()
    assert "InvalidParameterError: height=30 is not valid" in form.status.value


def test_size_presets_are_valid_for_the_family(pipe, tiny):
    for candidate in (pipe, loading.load_pipeline(tiny["qwen-image"], device_map=None)):
        multiple = generation.size_multiple(candidate)
        presets = widgets.size_presets(candidate)
        assert len(presets) >= 3 and len(set(presets)) == len(presets)
        assert all(w % multiple == 0 and h % multiple == 0 and w > 0 and h > 0 for w, h in presets)


def test_form_renders_headless_without_waiting(pipe):
    from IPython.core.formatters import DisplayFormatter

    form = widgets.GenerationForm(pipe, size=(32, 32))
    data, _ = DisplayFormatter().format(form.box)
    assert "application/vnd.jupyter.widget-view+json" in data


def test_gallery_lists_every_image_with_its_prompt(tmp_path):
    fox = {"parameters": {"prompt": "<b>fox</b>", "seed": 1}}
    outputs.save_image(Image.new("RGB", (8, 8), "gray"), tmp_path / "a", "one", fox)
    outputs.save_image(Image.new("RGB", (8, 8), "gray"), tmp_path, "two", {"parameters": {"prompt": "cat", "seed": 2}})
    page = outputs.write_gallery(tmp_path).read_text()
    assert page.count("<img ") == 2 and 'src="a/one.png"' in page and 'src="two.png"' in page
    assert "&lt;b&gt;fox&lt;/b&gt;" in page and "<b>fox</b>" not in page
