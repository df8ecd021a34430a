import shutil

import nbformat
import pytest

import helpers
from tools import release

ROOT = helpers.KIT_ROOT


@pytest.fixture()
def copy(tmp_path):
    for name in ("notebooks", "helpers"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "architectures"))
    for name in ("README.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_repository_agrees_with_itself():
    assert release.mismatches(ROOT) == []


def test_release_changes_every_place_in_one_step(copy):
    release.release("0.2.0", copy)
    assert release.current_version(copy) == "0.2.0"
    assert release.mismatches(copy) == []
    text = (copy / "notebooks" / "02_load_and_generate.ipynb").read_text()
    assert "blob/v0.2.0/notebooks/02_load_and_generate.ipynb" in text and "v0.1.0" not in text
    cells = nbformat.read(copy / "notebooks" / "03_component_swapping.ipynb", 4).cells
    setup = next(c for c in cells if c.id == "setup")
    assert 'KIT_VERSION = "0.2.0"' in setup.source.splitlines()  # the setup cell's one version line
    assert (copy / "CHANGELOG.md").read_text().splitlines()[2].startswith("## 0.2.0 (")


def test_a_notebook_left_behind_is_caught(copy):
    release.release("0.2.0", copy)
    notebook = copy / "notebooks" / "03_component_swapping.ipynb"
    notebook.write_text(notebook.read_text().replace("blob/v0.2.0/", "blob/v0.1.0/"))
    assert release.mismatches(copy) == ["03_component_swapping.ipynb: Colab badge has ['0.1.0']"]


def test_bad_version_is_refused(copy):
    with pytest.raises(ValueError, match="VERSION='v0.2' is not valid"):
        release.release("v0.2", copy)


def test_badges_and_clone_point_at_the_one_repository():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        text = path.read_text()
        assert f"colab.research.google.com/github/{helpers.REPOSITORY}/blob/" in text
        assert f"https://github.com/{helpers.REPOSITORY}" in text
