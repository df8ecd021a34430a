"""The kit's one data-parallel launcher (helpers.batch.launch_processes) with notebook 05's worker, and gather."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import batch, outputs
from helpers.errors import InvalidParameterError

PROMPTS = ["a cat", "a dog", "a fox"]

# Notebook 05's worker, as a script: the plan for one CPU process, PartialState().split_between_processes.
WORKER = """
import sys, torch
from accelerate import PartialState
from diffusers import DiffusionPipeline
from helpers import batch, generation, hub, loading, outputs, planning

model_id, output_dir, run_id, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
plan = planning.plan_load(model_id, dtype="float32", quantization="none", offload="none", device_map="cpu",
                          height=32, width=32)
source = hub.resolve_model_source(model_id)


def render_share(prompts):
    distributed_state = PartialState(cpu=True)
    pipeline = DiffusionPipeline.from_pretrained(source, **loading.plan_kwargs(plan, source))
    with distributed_state.split_between_processes(list(enumerate(prompts))) as my_prompts:
        for index, prompt in my_prompts:
            call = generation.call_arguments(pipeline, prompt=prompt, height=32, width=32, seed=5 + index,
                                             num_inference_steps=2, guidance_scale=1.0)
            outputs.save_generated(pipeline(**call).images[0], pipeline, model_id, call, output_dir,
                                   f"prompt{index:03d}", run_id=run_id, prompt_index=index,
                                   process_index=distributed_state.process_index,
                                   num_processes=distributed_state.num_processes)


batch.launch_processes(render_share, (prompts,), 2)
"""


def test_two_processes_render_every_prompt_exactly_once(tiny, tmp_path):
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    result = subprocess.run([sys.executable, "-c", WORKER, str(tiny["qwen-image"]), str(tmp_path / "out"), "run-1",
                             *PROMPTS], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(private_tmp)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(private_tmp.iterdir()) == []  # torchelastic_* folders went with the launch's private $TMPDIR
    images, metadata = outputs.gather(str(tmp_path / "out"), "run-1", PROMPTS)
    assert [m["parameters"]["prompt"] for m in metadata] == PROMPTS
    assert [m["parameters"]["seed"] for m in metadata] == [5, 6, 7]
    assert {m["context"]["process_index"] for m in metadata} == {0, 1}
    assert all(m["context"]["num_processes"] == 2 for m in metadata)
    assert all(image.size == (32, 32) for image in images)


def save(folder, run_id, index):
    meta = {"parameters": {"prompt": PROMPTS[index]}, "context": {"run_id": run_id, "prompt_index": index}}
    outputs.save_image(Image.new("RGB", (8, 8), "gray"), folder, f"prompt{index}", meta)


def test_gather_refuses_missing_and_doubled_prompts(tmp_path):
    save(tmp_path, "run", 0)
    save(tmp_path, "run", 0)
    save(tmp_path, "run", 2)
    save(tmp_path, "other-run", 1)
    with pytest.raises(RuntimeError, match="prompt 0 rendered 2 times; prompt 1 rendered 0 times"):
        outputs.gather(str(tmp_path), "run", PROMPTS)


@pytest.mark.parametrize("processes", [0, -1, 1.5, True, "2"])
def test_bad_process_counts_are_refused_before_anything_starts(processes):
    ran = []
    with pytest.raises(InvalidParameterError, match="num_processes="):
        batch.launch_processes(ran.append, ("x",), processes)
    assert ran == []


def test_one_process_runs_in_this_process():
    ran = []
    batch.launch_processes(ran.append, ("x",), 1)
    assert ran == ["x"]
