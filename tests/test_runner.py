import os

import nbformat
from conftest import progress_bar_cells
from nbformat.v4 import new_code_cell, new_notebook

from tools import runner


def test_required_gpus_come_from_notebook_metadata():
    needs = {path.name: runner.required_gpus(path) for path in sorted(runner.NOTEBOOKS.glob("[0-9]*.ipynb"))}
    assert needs["05_multi_gpu_balanced.ipynb"] == 2
    assert {name: n for name, n in needs.items() if name != "05_multi_gpu_balanced.ipynb"} == {
        name: 1 for name in needs if name != "05_multi_gpu_balanced.ipynb"
    }


def test_real_mode_skips_without_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # never start real-model runs from a unit test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.main(["--real"]) == 0
    assert "skipped, no CUDA GPU" in capsys.readouterr().out


def test_real_mode_skips_notebooks_needing_more_gpus(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    results = runner.run_real([runner.NOTEBOOKS / "05_multi_gpu_balanced.ipynb"], tmp_path)
    assert results == []
    assert "skipped 05_multi_gpu_balanced.ipynb: needs 2 CUDA GPU(s), 1 visible" in capsys.readouterr().out


def test_peak_vram_cell_runs_and_is_read_back(tmp_path):
    notebook = new_notebook(cells=[new_code_cell("x: int = 1  # a value", metadata={"tags": ["parameters"]}),
                                   new_code_cell(runner.PEAK_CELL)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "peak.ipynb"
    nbformat.write(notebook, source)
    result = runner.execute(source, tmp_path / "out.ipynb", {})
    assert result.error is None
    assert runner.peak_vram(result.executed) == "{}"  # no GPU here: an empty per-device map


def test_headless_kernels_draw_no_progress_bar_even_when_a_library_asks_for_one(tmp_path, monkeypatch):
    """diffusers passes disable=False to tqdm.auto; the runner's kernel startup hook still wins. The same
    notebook in a kernel without the hook draws the bar, so the check below can see one."""
    notebook = new_notebook(cells=[new_code_cell("x: int = 1  # a value", metadata={"tags": ["parameters"]}),
                                   new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3), disable=False):"
                                                 "\n    pass")])
    notebook.cells[1].id = "bar"
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "bar.ipynb"
    nbformat.write(notebook, source)
    runner.headless_environment()
    quiet = runner.execute(source, tmp_path / "quiet.ipynb", {})
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "plain-ipython"))  # an IPython home without the hook
    drawn = runner.execute(source, tmp_path / "drawn.ipynb", {})
    assert quiet.error is None and drawn.error is None
    assert progress_bar_cells(quiet.executed) == [] and progress_bar_cells(drawn.executed) == ["bar"]


def test_stand_ins_follow_parameter_defaults(tiny):
    declared = {"model_id": {"default": '"Qwen/Qwen-Image"'}, "vae_id": {"default": "'madebyollin/sdxl-vae-fp16-fix'"},
                "prompt": {"default": '"a cat"'}, "steps": {"default": "30"}, "broken": {"default": "[1, "}}
    assert runner.stand_ins(declared, tiny) == {"model_id": str(tiny["qwen-image"]), "vae_id": str(tiny["vae-alt"])}


def test_run_folders_never_collide(tmp_path):
    first, second = runner.new_run_folder(tmp_path), runner.new_run_folder(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()


def test_each_notebooks_line_is_printed_as_it_finishes(tmp_path, monkeypatch, capsys):
    """make run: a notebook's line appears before the next notebook starts, not all at the end."""
    seen_before_second = []

    def fake_run_all(notebooks, run_folder, tiny_dir, on_result=None, hub_endpoint=None):
        results = []
        for notebook in notebooks:
            if results:
                seen_before_second.append(capsys.readouterr().out)
            results.append(runner.Result(notebook, run_folder / notebook.name, 1.0))
            on_result(results[-1])
        return results

    monkeypatch.setattr(runner, "run_all", fake_run_all)
    monkeypatch.setattr("helpers.outputs.write_gallery", lambda folder: folder / "index.html")
    notebooks = [tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"]
    assert runner.main([str(n) for n in notebooks] + ["--runs", str(tmp_path / "runs")]) == 0
    assert "01_a.ipynb" in seen_before_second[0] and "02_b.ipynb" not in seen_before_second[0]


def test_headless_kernels_print_no_tcp_encryption_warning(tmp_path, capfd):
    """ipykernel warns "running over TCP without encryption" unless the manager provisions CurveZMQ keys."""
    notebook = tmp_path / "one.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("print('hi')")]), notebook)
    result = runner.execute(notebook, tmp_path / "out.ipynb", {})
    assert result.error is None
    assert "without encryption" not in capfd.readouterr().err


def test_ids_a_local_hub_serves_keep_their_real_defaults(tiny):
    declared = {"model_id": {"default": '"Qwen/Qwen-Image"'}, "vae_id": {"default": "'madebyollin/sdxl-vae-fp16-fix'"}}
    assert runner.stand_ins(declared, tiny, served=frozenset({"Qwen/Qwen-Image"})) == {"vae_id": str(tiny["vae-alt"])}


def test_kernel_environment_reaches_the_kernel_and_is_restored(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    before = dict(os.environ)
    code = "import os\nprint(os.environ['HF_ENDPOINT'], os.environ['HF_HUB_OFFLINE'], os.environ['no_proxy'])"
    notebook = new_notebook(cells=[new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "env.ipynb")
    result = runner.execute(tmp_path / "env.ipynb", tmp_path / "out.ipynb", {},
                            runner.hub_environment("http://127.0.0.1:9"))
    assert result.error is None
    printed = nbformat.read(result.executed, as_version=4).cells[-1].outputs[0]["text"]
    assert printed.split() == ["http://127.0.0.1:9", "0", "127.0.0.1,localhost"]
    assert dict(os.environ) == before  # this process's environment is as it was


def _throwaway(folder, name, *sources, parameters=None):
    """A small notebook written for one test: an optional parameters cell, then one code cell per source."""
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]})] if parameters else []
    cells += [new_code_cell(source) for source in sources]
    for number, cell in enumerate(cells):
        cell.id = f"{name}-{number}"
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def test_a_killed_kernel_is_reported_and_the_run_goes_on(tiny, tmp_path, monkeypatch, capsys):
    """The OOM killer's SIGKILL mid-cell: named (notebook, cell, cause), marked in the executed copy; the next
    notebooks still run, the gallery is written, the exit code is non-zero. A cell that raises is reported as before."""
    for name in ("KIT_QUIET", "HF_HUB_OFFLINE", "PYTHONWARNINGS"):  # main() sets these for the kernels
        monkeypatch.setenv(name, os.environ.get(name, ""))
    folder = tmp_path / "notebooks"
    folder.mkdir()
    dies = _throwaway(folder, "01_dies", "print('loading')",
                      "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does",
                      "print('never reached')",
                      parameters='model_id: str = "big/model"  # the model\nplan_only: bool = False  # plan and stop')
    raises = _throwaway(folder, "02_raises", "raise ValueError('boom')")
    survives = _throwaway(
        folder, "03_survives",
        "import pathlib\nfrom PIL import Image\npath = pathlib.Path(output_dir, 'after-the-death.png')\n"
        "path.parent.mkdir(parents=True)\nImage.new('RGB', (8, 8), 'red').save(path)\nprint(path)",
        parameters='output_dir: str = "out"  # where images go')
    runs = tmp_path / "runs"

    code = runner.main([str(dies), str(raises), str(survives), "--runs", str(runs), "--tiny-dir", str(runner.TINY_DIR)])

    printed = capsys.readouterr()
    assert code != 0
    report = printed.err
    death = report[report.index("01_dies.ipynb"):report.index("02_raises.ipynb")]
    assert "code cell 3 (id 01_dies-2: 'import os, signal')" in death  # after the parameters and injected cells
    assert "SIGKILL" in death and "out of memory" in death
    assert "-p plan_only True" in death and "-p model_id" in death  # the notebook's own parameters
    assert "02_raises.ipynb failed in code cell 1 (id 02_raises-0: \"raise ValueError('boom')\"): ValueError: boom" \
        in report
    (run_folder,) = runs.iterdir()
    executed = nbformat.read(run_folder / "01_dies.ipynb", as_version=4)
    running = next(cell for cell in executed.cells if cell.get("id") == "01_dies-2")
    (error,) = [output for output in running.outputs if output.output_type == "error"]
    assert error.ename == "DeadKernelError" and "SIGKILL" in error.evalue
    assert running.metadata.papermill.status == "failed" and executed.metadata.papermill.exception is True
    nbformat.validate(executed)
    assert next(cell for cell in executed.cells if cell.get("id") == "01_dies-3").metadata.papermill.status == "pending"
    survived = nbformat.read(run_folder / "03_survives.ipynb", as_version=4)
    assert "after-the-death.png" in survived.cells[-1].outputs[0].text
    assert "after-the-death.png" in (run_folder / "index.html").read_text()  # the gallery was still written
    assert not [path.name for path in run_folder.rglob("*.tmp")]  # atomic writes left no temporary file
    assert "ok     03_survives.ipynb" in printed.out


def test_exit_statuses_are_worded_by_cause():
    from tools.kernel_death import cause, likely_out_of_memory

    assert "out of memory" in cause(-9) and likely_out_of_memory(-9)
    assert "crashed with SIGSEGV (signal 11)" in cause(-11) and not likely_out_of_memory(-11)
    assert cause(3) == "the kernel process exited with status 3 while a cell was running"
    assert "unknown" in cause(None) and likely_out_of_memory(None)


def test_a_kernel_dead_before_any_cell_still_leaves_a_marked_copy(tmp_path):
    """No executed copy from papermill and no started cell: the source is copied with a note on top."""
    from tools.kernel_death import mark_running_cell

    source = _throwaway(tmp_path, "never_started", "print(1)")
    executed = tmp_path / "run" / "never_started.ipynb"
    executed.parent.mkdir()
    assert mark_running_cell(executed, source, "the kernel process was killed by SIGKILL") == \
        "no cell (the kernel died before the first one ran)"
    note = nbformat.read(executed, as_version=4).cells[0]
    assert note.cell_type == "markdown" and "SIGKILL" in note.source
    assert [path.name for path in executed.parent.iterdir()] == ["never_started.ipynb"]
