"""The kit's exceptions. Each subclasses the builtin a caller would expect to catch.

Messages follow one rule: say what was wrong, quote the bad value, then give the fix.
"""

from __future__ import annotations


class KitError(Exception):
    """Base class of every error the kit raises itself."""


class InvalidParameterError(KitError, ValueError):
    """A parameter value the kit (or diffusers) does not accept."""

    def __init__(self, name: str, value, allowed: str, hint: str = ""):
        self.name, self.value, self.allowed = name, value, allowed
        message = f"{name}={value!r} is not valid: {allowed}."
        super().__init__(f"{message} {hint}".strip())


class LocalPathNotFoundError(KitError, FileNotFoundError):
    """A local model path that does not exist (never silently turned into a Hub lookup)."""


class ModelNotCachedOfflineError(KitError, OSError):
    """A Hub id that is not in the local cache while the Hub cannot be reached."""


class VersionMismatchError(KitError, ImportError):
    """An installed package whose version differs from the kit's pin."""


class ImportOrderError(KitError, RuntimeError):
    """A setting that must be made before a library is imported, made after it."""


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
