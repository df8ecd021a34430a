"""A stand-in for a second kernel on the same HF_HOME, for tools/sweep.py (PYTHONPATH=tools/second_kernel).

The moment diffusers has copied a custom pipeline into its modules folder, and before it imports the copy,
this rewrites the copy, as another kernel loading its own pipeline.py there would. The kit must refuse to
import it (the copy no longer matches the audit); the rewritten code raises if it ever runs.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

TARGET = "diffusers.utils.dynamic_modules_utils"
OTHER_CODE = "raise RuntimeError('the second kernel\\'s unaudited code ran')\n"


def _rewrite_each_copy(module) -> None:
    copy = module.get_cached_module_file

    def copy_then_rewrite(*args, **kwargs):
        module_path = copy(*args, **kwargs)
        Path(module.HF_MODULES_CACHE, module_path).write_text(OTHER_CODE)
        return module_path

    module.get_cached_module_file = copy_then_rewrite


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def run_then_patch(module):
            run(module)
            _rewrite_each_copy(module)

        spec.loader.exec_module = run_then_patch
        return spec


sys.meta_path.insert(0, _AfterImport())
