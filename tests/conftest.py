"""Shared fixtures: an isolated Hugging Face home and token, offline Hub, tiny models built once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KIT_QUIET", "1")

from tools import runner  # noqa: E402
from tools.tiny import build_all  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path, monkeypatch):
    """Each test gets an empty HF cache and no token, and the Hub is offline (huggingface_hub style)."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return home


@pytest.fixture(scope="session")
def tiny() -> dict:
    """The tiny models, built once per test run into .cache/tiny (rebuilt when the builder code changes)."""
    return build_all(runner.TINY_DIR)
