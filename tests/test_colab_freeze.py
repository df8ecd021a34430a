"""Colab's published package set (tools/colab/, vendored from googlecolab/backend-info) against the kit's pins.

Core tests: standard library, packaging and pytest only (CI runs them on Python 3.11 and 3.13). The check is
on metadata: the Requires-Dist lines vendored in tools/colab/requires-dist.txt, replayed as pip's own check
would after the hosted install. `make test-colab` does the real install and `pip check` in a Colab-like venv.
"""

import pytest

from helpers import rules, setup
from tools.colab import requires, runtime

FREEZE = runtime.freeze()
KIT = {name: str(req.specifier).removeprefix("==") for name, req in setup.load_pins().items()
       if name in setup.HOSTED_INSTALL}
BACKEND_PINS = {setup.canonicalize_name(spec["package"]): spec["pin"] for spec in rules.BACKENDS.values()}


def test_the_vendored_freeze_names_its_source_and_is_the_runtime_the_issue_describes():
    source = dict(line.split(" ", 1) for line in (runtime.HERE / "SOURCE").read_text().splitlines())
    assert source["repository"] == "googlecolab/backend-info" and len(source["commit"]) == 40
    assert runtime.python_version().startswith("3.13.")
    assert FREEZE["torch"] == "2.11.0" and FREEZE["diffusers"] == "0.39.0" and FREEZE["gradio"] == "6.24.0"
    assert "bitsandbytes" not in FREEZE and "optimum-quanto" not in FREEZE


def test_every_hosted_pin_and_backend_has_its_requirements_vendored():
    vendored = requires.parse()
    missing = [f"{name}=={version}" for name, version in {**KIT, **BACKEND_PINS}.items()
               if (name, version) not in vendored]
    assert missing == [], "regenerate tools/colab/requires-dist.txt (python -m tools.colab.requires collect ...)"


def test_the_hosted_install_leaves_colabs_packages_consistent():
    assert requires.conflicts(FREEZE, KIT, requires.parse()) == []


@pytest.mark.parametrize("backend", sorted(rules.BACKENDS))
def test_each_backend_installed_on_top_leaves_colab_consistent(backend):
    spec = rules.BACKENDS[backend]
    changed = {**KIT, setup.canonicalize_name(spec["package"]): spec["pin"]}
    assert requires.conflicts(FREEZE, changed, requires.parse()) == []


def test_the_check_catches_the_huggingface_hub_2_conflict_with_gradio():
    """huggingface_hub 2.4.0 (the earlier pin) broke Colab's gradio and gradio-client: the check must say so."""
    found = requires.conflicts(FREEZE, {**KIT, "huggingface-hub": "2.4.0"}, requires.parse())
    assert any(line.startswith("gradio 6.24.0 requires huggingface-hub<2.0") for line in found), found
    assert any(line.startswith("gradio-client 2.6.0 requires huggingface-hub<2.0") for line in found), found


def test_colabs_torch_is_inside_the_kits_torch_range():
    assert setup.load_pins()["torch"].specifier.contains(FREEZE["torch"])


def test_colabs_too_old_torchao_is_what_the_backend_table_calls_too_old():
    found = setup.backend_mismatches(["torchao"], {"torchao": FREEZE["torchao"]})
    assert [m.installed for m in found] == ["0.10.0"] and found[0].minimum == rules.BACKENDS["torchao"]["min"]


def test_the_core_run_counts_per_file_and_fails_a_skip(tmp_path):
    from tools.colab import core_tests

    report = tmp_path / "report.xml"
    report.write_text('<testsuites><testsuite><testcase classname="tests.test_setup" name="a"/>'
                      '<testcase classname="tests.test_setup" name="b"><skipped/></testcase>'
                      '<testcase classname="tests.test_env" name="c"/></testsuite></testsuites>')
    assert core_tests.passed_per_file(report) == ({"tests/test_setup.py": 1, "tests/test_env.py": 1}, 1)
    assert set(core_tests.CORE) >= {"tests/test_setup.py", "tests/test_colab_freeze.py"}
