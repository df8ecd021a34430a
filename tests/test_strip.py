import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tools import strip


def dirty_notebook():
    nb = new_notebook()
    cell = new_code_cell("print(1)", execution_count=3, outputs=[new_output("stream", text="1\n")])
    cell.metadata.update({"executionInfo": {"status": "ok"}, "outputId": "abc", "tags": ["parameters"],
                          "some_future_editor_key": {"x": 1}})
    nb.cells = [cell]
    nb.metadata.update({"papermill": {"duration": 1}, "kit": {"version": "0.1.0"}, "vscode": {"interpreter": "x"}})
    return nb


def test_strip_removes_run_state_and_keeps_tags(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text(nbformat.writes(dirty_notebook()))
    assert strip.main([str(path), "--check"]) == 1
    assert strip.main([str(path)]) == 0
    assert strip.main([str(path), "--check"]) == 0
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.outputs == [] and cell.execution_count is None
    assert cell.metadata == {"tags": ["parameters"]}
    assert nbformat.read(path, as_version=4).metadata == {"kit": {"version": "0.1.0"}}
