import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import data_parallel, outputs
from helpers.errors import InvalidParameterError

PROMPTS = ["a cat", "a dog", "a fox"]


def test_two_processes_render_every_prompt_exactly_once(tiny, tmp_path):
    script = (
        "import sys; from helpers import data_parallel\n"
        f"print(data_parallel.launch(2, {str(tiny['qwen-image'])!r}, {PROMPTS!r}, {str(tmp_path)!r},"
        " 32, 32, 2, 1.0, 5, 'float32'))\n"
    )
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(private_tmp)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(private_tmp.iterdir()) == []  # torchelastic_* folders went with the launch's private $TMPDIR
    run_id = result.stdout.strip().splitlines()[-1]
    images, metadata = data_parallel.gather(str(tmp_path), run_id, PROMPTS)
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
        data_parallel.gather(str(tmp_path), "run", PROMPTS)


@pytest.mark.parametrize("prompts, processes, message", [
    ([], 2, "prompts=\\[\\]"), (["ok", ""], 2, "prompts="), ("a cat", 2, "prompts="), (PROMPTS, 0, "num_processes=0"),
])
def test_bad_launch_arguments(tmp_path, prompts, processes, message):
    with pytest.raises(InvalidParameterError, match=message):
        data_parallel.launch(processes, "unused", prompts, str(tmp_path), 32, 32, 2, 1.0, 0, "float32")
