import pytest
from packaging.requirements import Requirement

from helpers import pins
from helpers.errors import VersionMismatchError


def test_requirements_pin_the_stack_the_kit_is_tested_on():
    pinned = pins.load_pins()
    expected = {
        "diffusers": "==0.42.1", "transformers": "==5.23.0", "accelerate": "==1.15.0",
        "huggingface-hub": "==2.4.0", "safetensors": "==0.8.0", "papermill": "==2.7.0",
        "nbval": "==0.11.0", "ipywidgets": "==8.1.9",
    }
    assert {name: str(pinned[name].specifier) for name in expected} == expected
    unpinned = [name for name, req in pinned.items() if name != "torch" and not str(req.specifier).startswith("==")]
    assert unpinned == []


@pytest.mark.parametrize("version, admitted", [
    ("2.11.0+cu126", True),  # Colab's CUDA build
    ("2.13.0+cpu", True),  # the CPU build CI installs
    ("2.10.0", False),
    ("2.14.0", False),
])
def test_torch_range_admits_colab_and_cpu_builds(version, admitted):
    assert pins.load_pins()["torch"].specifier.contains(version) is admitted


def test_load_pins_skips_comments_and_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n-r other.txt\nfoo==1.0  # trailing comment\n\nBar_Baz>=2,<3\n")
    assert {name: str(req.specifier) for name, req in pins.load_pins(path).items()} == {
        "foo": "==1.0", "bar-baz": "<3,>=2",
    }


def test_missing_pins_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        pins.load_pins(tmp_path / "nope.txt")


def test_find_mismatches_names_package_and_both_versions():
    pinned = {"diffusers": Requirement("diffusers==0.42.1"), "safetensors": Requirement("safetensors==0.8.0")}
    found = pins.find_mismatches(pinned, {"diffusers": "0.35.2", "safetensors": "0.8.0"})
    assert [str(m) for m in found] == ["diffusers: pinned ==0.42.1, found 0.35.2"]
    missing = pins.find_mismatches(pinned, {"diffusers": "0.42.1"})
    assert [str(m) for m in missing] == ["safetensors: pinned ==0.8.0, found not installed"]


def test_strict_check_raises_with_the_fix():
    pinned = {"diffusers": Requirement("diffusers==0.0.1")}
    with pytest.raises(VersionMismatchError) as error:
        pins.check_pins(pinned, strict=True)
    message = str(error.value)
    assert "diffusers: pinned ==0.0.1, found 0.42.1" in message
    assert "pip install -r requirements.txt" in message


def test_installed_stack_matches_the_pins():
    assert pins.check_pins() == []
