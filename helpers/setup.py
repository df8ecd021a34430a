"""The setup cell's one call: check the parameters, install the pins, then the import-time settings.

Order matters in a hosted runtime (Colab): `ensure_pinned` must run before anything imports one of
the pinned packages (diffusers, transformers, accelerate, huggingface_hub, safetensors, tokenizers),
or Python keeps the host's old module and a restart is forced. So the parameter check is split:
everything that imports none of them runs first (a bad value still fails before the slow install),
then the install, then the Hub-id checks (they import huggingface_hub), then `env.configure`.

A new notebook's setup cell is the kit bootstrap followed by:

    from helpers.setup import prepare
    prepare(globals(), parallel_loading=...)
"""

from __future__ import annotations

import sys

from . import env, validate
from .errors import KitError
from .install import Plan, ensure_pinned


def brief_kit_errors() -> bool:
    """In IPython, show the kit's own errors as their one-line message, not a traceback.

    A KitError already says what was wrong and the fix; the frames above it (the helpers' internals,
    IPython's machinery) only bury that line. The cell still fails (papermill and nbval see an error
    output with the exception's name and message). Other exceptions keep their full traceback.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    if shell is None:
        return False

    def show(shell, etype, value, tb, tb_offset=None):
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])

    shell.set_custom_exc((KitError,), show)
    return True


def prepare(namespace: dict, install: bool = True, pipeline_classes: tuple[str, ...] = (), **settings) -> Plan:
    """Check `namespace` (the notebook's `globals()`), install what differs, apply `env.configure(**settings)`.

    install: False only checks the pins (Colab installs nothing).
    pipeline_classes: the model families the notebook is written for (`validate.check`).
    settings: passed to `env.configure` (parallel_loading, hf_home, quiet).
    """
    brief_kit_errors()
    validate.check(namespace, stage="before_install", pipeline_classes=pipeline_classes)
    plan = ensure_pinned(install=install)
    validate.check(namespace, stage="after_install", pipeline_classes=pipeline_classes)
    env.configure(**settings)
    return plan
