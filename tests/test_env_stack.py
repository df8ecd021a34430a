"""Rules and environment facts checked against the installed stack (huggingface_hub, diffusers, torch).

tests/test_env.py holds the core tests that need only the standard library (they also run on Python 3.13 in
`make test-core`); these need the pinned libraries.
"""
import pytest

from helpers import env, rules


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("on", True), ("yes", True),
                                             ("0", False), ("", False), (None, False), ("enabled", False)])
def test_truthy_reads_flags_as_huggingface_hub_does(value, expected):
    from huggingface_hub.constants import _is_true

    assert rules.truthy(value) is expected
    assert _is_true(value) is expected  # the same answer as huggingface_hub's own reader


def test_backend_minimums_are_what_the_pinned_libraries_require():
    from diffusers.utils import import_utils  # noqa: F401 - the pinned stack is importable here
    from transformers.utils import import_utils as transformers_imports

    assert rules.BACKENDS["bitsandbytes"]["min"] == transformers_imports.BITSANDBYTES_MIN_VERSION
    assert rules.BACKENDS["torchao"]["min"] == transformers_imports.TORCHAO_MIN_VERSION
    assert rules.BACKENDS["gguf"]["min"] == transformers_imports.GGUF_MIN_VERSION
    import inspect

    from diffusers.quantizers.quanto import quanto_quantizer

    check = f'is_optimum_quanto_version(">=", "{rules.BACKENDS["quanto"]["min"]}")'
    assert check in inspect.getsource(quanto_quantizer)


def test_this_machine_is_measured(tmp_path):
    here = env.detect_hardware(str(tmp_path / "not" / "there"))  # a cache folder not made yet: its parent's disk
    assert here.name == "this machine" and here.ram_gib > 0 and here.disk_bytes > 0
