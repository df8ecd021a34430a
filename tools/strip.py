"""Strip notebooks for committing: no outputs, no execution counts, no per-run metadata.

`python -m tools.strip notebooks/*.ipynb` rewrites them in place; `--check` only reports
(exit 1 if any would change), which is what the hygiene test and CI use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

# Allowlists, as nbdev keeps them: whatever else an editor or a run adds (Colab's executionInfo and outputId,
# papermill's timings, widget state, language_info, scrolled/collapsed...) never reaches a commit.
KEPT_CELL_METADATA = ("tags",)  # "parameters", "skip-execution", "nbval-skip"
KEPT_NOTEBOOK_METADATA = ("kernelspec", "accelerator", "colab", "kit")  # Colab's GPU choice, the kit's version


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in notebook.cells:
        for key in [key for key in cell.metadata if key not in KEPT_CELL_METADATA]:
            del cell.metadata[key]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    for key in [key for key in notebook.metadata if key not in KEPT_NOTEBOOK_METADATA]:
        del notebook.metadata[key]
    return notebook


def render(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.strip", description=__doc__)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report notebooks that are not stripped; change nothing")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.notebooks:
        original = path.read_text()
        stripped = render(strip(nbformat.reads(original, as_version=4)))
        if stripped != original:
            dirty.append(path)
            if not args.check:
                path.write_text(stripped)
    for path in dirty:
        print(f"{'not stripped' if args.check else 'stripped'}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
