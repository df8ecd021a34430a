"""diffusers-notebook-kit helpers, the package the notebooks import: light (no torch, no diffusers), so a notebook can
check its parameters before the heavy libraries load. `make release VERSION=x.y.z` sets the version everywhere."""

from pathlib import Path

__version__ = "0.1.0"
REPOSITORY = "diffusers-notebook-kit/diffusers-notebook-kit"  # owner/name on GitHub: badges and the Colab clone
KIT_ROOT = Path(__file__).resolve().parent.parent  # the checkout: notebooks/, community/, requirements.txt


def require(version: str) -> None:
    """Stop with the fix when the imported kit is not the version this notebook was written for."""
    if __version__ != version:
        raise ImportError(
            f"This notebook is kit {version}, but helpers {__version__} was imported from {Path(__file__).parent}. "
            "Fix: in Colab, Runtime > Restart session and run the setup cell again; in a local clone, open that "
            f"checkout's own notebooks or `git checkout v{version}`."
        )
