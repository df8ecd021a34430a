"""Every exception the kit raises (each subclasses the builtin a caller would catch and carries `name`, `value`, `rule`
and `fix`), and `redact`, which keeps secrets out of their messages. Standard library only."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

_NO_VALUE = object()
_SECRETS = ((re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@"), r"\1***@"),  # URL userinfo
            (re.compile(r"(?i)([?&;][\w.-]*(?:token|key|sig|signature|password|passwd|secret|credential)[\w.-]*=)"
                        r"[^&;#\s'\"]+"), r"\1***"),  # credential-like query values
            (re.compile(r"(?i)\b(bearer\s+)[\w.~+/-]+=*"), r"\1***"),
            (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "***"))  # Hugging Face tokens, anywhere


def redact(text: str) -> str:
    """`text` with URL passwords, credential-like query values and Hugging Face tokens replaced by ***."""
    text = str(text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class KitError(Exception):
    """Base class of every error the kit raises itself."""

    def __init__(self, rule: str = "", *, name: str | None = None, value=_NO_VALUE, fix: str = ""):
        self.name, self.rule, self.fix = name, redact(rule), redact(fix)
        self.value = None if value is _NO_VALUE else value
        head = f"{name}={value!r} is not valid: {rule}." if name is not None and value is not _NO_VALUE else rule
        super().__init__(redact(f"{head} {fix}".strip()))


class InvalidParameterError(KitError, ValueError):
    """A parameter value the kit (or diffusers) does not accept."""

    def __init__(self, name: str, value, rule: str, fix: str = ""):
        super().__init__(rule, name=name, value=value, fix=fix)


class LocalPathNotFoundError(KitError, FileNotFoundError):
    """A local model path that does not exist (never silently turned into a Hub lookup)."""


class FolderNotWritableError(KitError, PermissionError):
    """A folder the kit or diffusers must write to cannot be written (e.g. a read-only HF_HOME)."""


class ModelNotCachedOfflineError(KitError, OSError):
    """A Hub id that is not in the local cache while the Hub cannot be reached."""


class GatedModelError(KitError, PermissionError):
    """The Hub refused a download (401/403): a gated repo whose licence is not accepted, or no or a bad token."""


class HubRequestError(KitError, ConnectionError):
    """The Hub failed a request (a refused token, a server error, a cut download, a long rate limit)."""


class NonFiniteLatentsError(KitError, FloatingPointError):
    """The denoising loop produced NaN or inf latents: the image would be black or noise."""


class NotAnImageError(KitError, ValueError):
    """A file named like an image that PIL cannot read."""


class BlankImageWarning(UserWarning):
    """An all-black image was saved (marked in its metadata): NaN output, or the safety checker blanked it."""


warnings.simplefilter("always", BlankImageWarning)  # every blank image is reported, not only the first


def __getattr__(name: str):
    """`KitOutOfMemoryError` is still a `torch.OutOfMemoryError`, so it is made on first use (no torch at import)."""
    if name != "KitOutOfMemoryError":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch

    class KitOutOfMemoryError(KitError, torch.OutOfMemoryError):
        """Out of memory, with the next options; still a torch.OutOfMemoryError for code that catches that."""

    KitOutOfMemoryError.__module__, KitOutOfMemoryError.__qualname__ = __name__, name
    globals()[name] = KitOutOfMemoryError
    return KitOutOfMemoryError


class PlanDoesNotFitError(KitError, RuntimeError):
    """A load plan that does not fit the hardware: raised before any download. Carries the plan."""

    def __init__(self, plan):
        self.plan, self.reasons, self.alternatives = plan, list(plan.reasons), list(plan.alternatives)
        lines = [f"{plan.model_id} does not fit {plan.hardware.name} as planned ({plan.summary()})."]
        lines += [f"- {reason}" for reason in plan.reasons]
        if plan.alternatives:
            lines += ["Alternatives, best first:", *(f"{i}. {a}" for i, a in enumerate(plan.alternatives, start=1))]
        lines.append("Nothing was downloaded. Change a parameter above, or pass force=True to load anyway.")
        super().__init__("\n".join(lines))


class QuantizationUnavailableError(KitError, RuntimeError):
    """A quantization choice this machine cannot run (a GPU-only backend without a GPU, a missing or old package)."""


class OutputDirLockedError(KitError, RuntimeError):
    """Another batch run holds the lock on this output_dir."""


class PromptsFileError(KitError, ValueError):
    """A prompts file that cannot be read; `line` is the 1-based line of the bad row (0: the whole file)."""

    def __init__(self, path, line: int, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{f'{self.path}, line {line}' if line else self.path}: {problem}")


class UnsafeStateFileError(KitError, OSError):
    """A batch state file (lock, manifest, staging folder) that is a link or not a regular file: never followed."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path} {problem}: the kit never follows a link or opens a special file for its own "
                         "state, so that it cannot be made to truncate, read or write anything outside output_dir",
                         name=None, fix=f"Remove {Path(path).name!r} from the folder (it is the kit's, recreated as "
                         "needed) and run again, or choose another output_dir.")


class RemoteCodeRefused(KitError, PermissionError):
    """Remote or community code the kit will not run: the message says why and what to do instead."""


class RemoteCodeChanged(KitError, RuntimeError):
    """Code files that differ from the pinned manifest (or from what was audited); carries what changed."""

    def __init__(self, changes: dict[str, tuple[str | None, str | None]], against: str = "the pinned manifest"):
        self.changes = changes
        lines = [f"  {path}: pinned {pinned or 'absent'}, found {found or 'absent'}"
                 for path, (pinned, found) in sorted(changes.items())]
        super().__init__(f"Remote code differs from {against}; nothing was run:\n" + "\n".join(lines)
                         + "\nRead the new code, then pin the new hashes if you trust it.")


class BadVideoError(KitError, ValueError):
    """Frames that must not be saved as a result (NaN, all black); the message says what to change."""


class PipInstallError(KitError, RuntimeError):
    """pip exited with an error (the hosted install); carries the arguments, its exit status and its output."""

    def __init__(self, args: list[str], returncode: int, output: str):
        self.args_, self.returncode, self.output = args, returncode, output
        super().__init__(f"`pip install {' '.join(args)}` failed (exit {returncode}):\n{output[-2000:]}\n",
                         fix="Fix: read pip's error above (network, disk space, a version pip cannot find), "
                             "then run the setup cell again.")
