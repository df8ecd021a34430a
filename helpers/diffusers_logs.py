"""Log filters for lines that mislead a reader: they describe the libraries' internals, not the run."""

from __future__ import annotations

import logging
from contextlib import contextmanager

# Printed when `import diffusers` imports torchao (whenever it is installed): torchao's optional CUDA kernels, torch's
# pytree note on torchao's enums, diffusers' note on classes for torchao checkpoints. None of them concerns a run.
BACKEND_IMPORT_NOISE = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def quiet_backend_imports() -> None:
    """Drop only the import-time lines above (call before diffusers is imported); every other warning still shows."""
    for name, fragments in BACKEND_IMPORT_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))


@contextmanager
def without_empty_fp32_notes():
    """Hide diffusers' "modules ... should be kept in float32: []" note, logged even when nothing is cast."""
    target = logging.getLogger("diffusers.models.modeling_utils")
    note_filter = _DropMessages(("should be kept in float32: []",))
    target.addFilter(note_filter)
    try:
        yield
    finally:
        target.removeFilter(note_filter)
