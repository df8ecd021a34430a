"""Data-parallel generation: one pipeline per process, the prompt list split between processes.

`launch` starts `num_processes` workers with `accelerate.notebook_launcher` (from a notebook or a
script); each worker takes its share with `PartialState().split_between_processes`, renders it and
saves every image with the kit's metadata. `gather` reads them back in prompt order and checks that
every prompt was rendered exactly once. Each prompt uses `seed + its index`, so an image does not
depend on how many processes ran.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from . import outputs


def generate_shard(model_id: str, prompts: list[str], output_dir: str, run_id: str, height: int, width: int,
                   num_inference_steps: int, guidance_scale: float, seed: int, dtype: str) -> None:
    """Worker body: load the pipeline on this process's device and render this process's prompts."""
    import torch
    from accelerate import PartialState

    from . import generation, loading

    state = PartialState(cpu=not torch.cuda.is_available())
    pipe = loading.load_pipeline(model_id, dtype=dtype, device_map=None).to(state.device)
    with state.split_between_processes(list(enumerate(prompts))) as mine:
        for index, prompt in mine:
            call = generation.call_arguments(pipe, prompt=prompt, height=height, width=width,
                                             num_inference_steps=num_inference_steps,
                                             guidance_scale=guidance_scale, seed=seed + index)
            image = pipe(**call).images[0]
            outputs.save_generated(image, pipe, model_id, call, output_dir, f"prompt{index:03d}",
                                   prompt_index=index, run_id=run_id, process_index=state.process_index,
                                   num_processes=state.num_processes)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the processes' rendezvous: accelerate's fixed default (29500) makes
    two runs on one machine (two notebooks, a test and a notebook) fail with "address already in use"."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_LAUNCH_LOCK = threading.Lock()  # $TMPDIR is process-wide: one launch at a time changes it


@contextmanager
def _private_tempdir():
    """torch.distributed.elastic (under notebook_launcher) leaves torchelastic_* folders in $TMPDIR after
    every launch; give it a private one for the launch, removed afterwards, so nothing is left behind."""
    with _LAUNCH_LOCK, tempfile.TemporaryDirectory(prefix="kit-launch-") as private:
        saved = os.environ.get("TMPDIR"), tempfile.tempdir
        os.environ["TMPDIR"], tempfile.tempdir = private, private
        try:
            yield
        finally:
            tempfile.tempdir = saved[1]
            if saved[0] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[0]


def launch_processes(function, args: tuple, num_processes: int) -> None:
    """`accelerate.notebook_launcher(function, args, num_processes)` on a free port and a private $TMPDIR."""
    from accelerate import notebook_launcher

    with _private_tempdir():
        notebook_launcher(function, args, num_processes=num_processes, use_port=str(free_port()))


def launch(num_processes: int, model_id: str, prompts: list[str], output_dir: str, height: int, width: int,
           num_inference_steps: int, guidance_scale: float, seed: int, dtype: str) -> str:
    """Run `generate_shard` in `num_processes` processes (GPUs if present, else CPU over gloo); returns the run id."""
    from . import rules

    rules.prompt_list("prompts", prompts)
    rules.whole("num_processes", num_processes, 1)
    run_id = uuid.uuid4().hex
    args = (model_id, prompts, output_dir, run_id, height, width, num_inference_steps, guidance_scale, seed, dtype)
    if num_processes == 1:
        generate_shard(*args)
    else:
        launch_processes(generate_shard, args, num_processes)
    return run_id


def gather(output_dir: str, run_id: str, prompts: list[str]) -> tuple[list[Image.Image], list[dict]]:
    """The run's images in prompt order, with their metadata; raises if a prompt is missing or doubled."""
    found: dict[int, list[tuple[Path, dict]]] = {}
    for path, metadata in outputs.saved_images(output_dir):
        context = metadata.get("context", {})
        if context.get("run_id") == run_id:
            found.setdefault(context["prompt_index"], []).append((path, metadata))
    problems = [f"prompt {i} rendered {len(found.get(i, []))} times" for i in range(len(prompts))
                if len(found.get(i, [])) != 1]
    if problems:
        raise RuntimeError(f"Data-parallel run {run_id} in {output_dir}: " + "; ".join(problems))
    ordered = [found[i][0] for i in range(len(prompts))]
    images = []
    for path, _ in ordered:
        with Image.open(path) as image:
            images.append(image.copy())
    return images, [metadata for _, metadata in ordered]
