"""The kit's exceptions. Each subclasses the builtin a caller would expect to catch.

Every error carries its parts as fields, not only as text: `name` (the parameter, when there is one),
`value` (what was given), `rule` (what is allowed or what went wrong) and `fix` (what to do). The message
is built from them by one rule: say what was wrong, quote the bad value, then give the fix. Code that
re-reports an error under another parameter name uses the fields, never the message text.
"""

from __future__ import annotations

_NO_VALUE = object()


class KitError(Exception):
    """Base class of every error the kit raises itself."""

    def __init__(self, rule: str = "", *, name: str | None = None, value=_NO_VALUE, fix: str = ""):
        self.name, self.rule, self.fix = name, rule, fix
        self.value = None if value is _NO_VALUE else value
        head = f"{name}={value!r} is not valid: {rule}." if name is not None and value is not _NO_VALUE else rule
        super().__init__(f"{head} {fix}".strip())


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


class VersionMismatchError(KitError, ImportError):
    """An installed package whose version differs from the kit's pin."""


class PlanDoesNotFitError(KitError, RuntimeError):
    """A load plan that does not fit the hardware: raised before any download. Carries the plan."""

    def __init__(self, plan):
        self.plan, self.reasons, self.alternatives = plan, list(plan.reasons), list(plan.alternatives)
        lines = [f"{plan.model_id} does not fit {plan.hardware.name} as planned ({plan.summary()})."]
        lines += [f"- {reason}" for reason in plan.reasons]
        if plan.alternatives:
            lines.append("Alternatives, best first:")
            lines += [f"{i}. {alt}" for i, alt in enumerate(plan.alternatives, start=1)]
        lines.append("Nothing was downloaded. Change a parameter above, or pass force=True to load anyway.")
        super().__init__("\n".join(lines))


class PipInstallError(KitError, RuntimeError):
    """pip exited with an error (the hosted install); carries the arguments, its exit status and its output."""

    def __init__(self, args: list[str], returncode: int, output: str):
        self.args_, self.returncode, self.output = args, returncode, output
        super().__init__(f"`pip install {' '.join(args)}` failed (exit {returncode}):\n{output[-2000:]}\n",
                         fix="Fix: read pip's error above (network, disk space, a version pip cannot find), "
                             "then run the setup cell again.")
