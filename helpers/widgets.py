"""An ipywidgets form for a loaded pipeline (prompt, steps, guidance, seed, size presets, Generate, Save), driven by
the calls a user makes by hand (`generation.call_arguments`, then the pipeline): code and a click give one image."""

from __future__ import annotations

import html
import random
from pathlib import Path

from . import generation, outputs


def size_presets(pipe) -> list[tuple[int, int]]:
    """(width, height) presets around the family's native resolution, all multiples the pipeline accepts."""
    multiple = generation.size_multiple(pipe)
    native = getattr(pipe, "default_sample_size", None)
    if native is None and "unet" in pipe.components:
        native = getattr(pipe.unet.config, "sample_size", None)  # Kandinsky 3's UNet has none
    side = (native or 64) * getattr(pipe, "vae_scale_factor", 8)
    snap = lambda value: max(multiple, round(value / multiple) * multiple)
    shapes = [(1, 1), (4 / 3, 3 / 4), (3 / 4, 4 / 3), (0.5, 0.5)]
    return list(dict.fromkeys((snap(side * wide), snap(side * high)) for wide, high in shapes))  # in order, no repeats


class GenerationForm:
    """The widgets, wired to one pipeline. Display it (last line of a cell) or call `generate()`/`save()`."""

    def __init__(self, pipe, model_id: str = "", output_dir: str = "outputs/form", prompt: str = "",
                 negative_prompt: str = "", num_inference_steps: int = 30, guidance_scale: float = 5.0,
                 seed: int = 0, size: tuple[int, int] | None = None, pipeline_kwargs: dict | None = None):
        import ipywidgets as w

        self.pipe, self.model_id, self.output_dir = pipe, model_id, output_dir
        self.pipeline_kwargs, self.image = dict(pipeline_kwargs or {}), None  # extra call arguments, from the notebook
        presets = size_presets(pipe)
        if size is not None and tuple(size) not in presets:
            presets.insert(0, tuple(size))
        self.prompt = w.Textarea(value=prompt, description="Prompt", layout=w.Layout(width="95%"))
        self.negative_prompt = w.Text(value=negative_prompt, description="Negative", layout=w.Layout(width="95%"))
        self.steps = w.IntSlider(value=num_inference_steps, min=1, max=100, description="Steps")
        self.guidance = w.FloatSlider(value=guidance_scale, min=0.0, max=20.0, step=0.5, description="Guidance")
        self.seed = w.IntText(value=seed, description="Seed")
        self.random_seed = w.Button(description="Random seed", icon="random")
        self.size = w.Dropdown(options=[(f"{wd} x {ht}", (wd, ht)) for wd, ht in presets],
                               value=tuple(size) if size else presets[0], description="Size")
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=num_inference_steps, description="Progress")
        self.save_button = w.Button(description="Save", icon="save", disabled=True)
        self.status, self.output = w.HTML(), w.Output()
        self.random_seed.on_click(lambda _: setattr(self.seed, "value", random.randrange(2**31)))
        self.generate_button.on_click(lambda _: self._report(self.generate))
        self.save_button.on_click(lambda _: self._report(self.save))
        self.box = w.VBox([self.prompt, self.negative_prompt, w.HBox([self.steps, self.guidance]),
                           w.HBox([self.seed, self.random_seed, self.size]),
                           w.HBox([self.generate_button, self.progress, self.save_button]), self.status, self.output])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.box)

    def _report(self, action) -> None:
        """Button handlers show errors in the form (an exception in a widget callback would go unseen)."""
        try:
            action()
        except Exception as error:  # shown to the user, with its type and message
            self.status.value = f"<b style='color:#b00'>{html.escape(f'{type(error).__name__}: {error}')}</b>"

    def _on_step(self, pipe, step, timestep, callback_kwargs):
        self.progress.value = step + 1
        return callback_kwargs

    def parameters(self) -> dict:
        width, height = self.size.value
        return dict(prompt=self.prompt.value, negative_prompt=self.negative_prompt.value, height=height, width=width,
                    num_inference_steps=self.steps.value, guidance_scale=self.guidance.value, seed=self.seed.value)

    def generate(self):
        """Generate with the current values; the image is shown in the form and kept as `form.image`."""
        parameters = self.parameters()
        call = generation.call_arguments(self.pipe, **parameters, callback_on_step_end=self._on_step,
                                         pipeline_kwargs=self.pipeline_kwargs)
        self.progress.max, self.progress.value = parameters["num_inference_steps"], 0
        self.status.value = "Generating..."
        self.image = self.pipe(**call).images[0]
        self.progress.value = self.progress.max
        self.output.outputs = ()
        self.output.append_display_data(self.image)  # works in a kernel and in plain Python (tests)
        self.save_button.disabled = False
        self.status.value = f"Done: seed {parameters['seed']}, {parameters['width']} x {parameters['height']}"
        self._last = call
        return self.image

    def save(self) -> Path:
        """Save the last image with its parameters (never overwriting); returns the path."""
        if self.image is None:
            raise RuntimeError("Nothing to save yet: press Generate (or call form.generate()) first.")
        path = outputs.save_generated(self.image, self.pipe, self.model_id, self._last, self.output_dir, "form",
                                      source="generation_form")
        self.status.value = f"Saved {html.escape(str(path))}"
        return path

