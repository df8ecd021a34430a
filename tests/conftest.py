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


SIMULATE_CUDA = os.environ.get("KIT_SIMULATE_CUDA", "") == "1"


@pytest.fixture(autouse=True)
def simulated_cuda_host(monkeypatch):
    """KIT_SIMULATE_CUDA=1 (make test-cuda-sim): torch reports one T4, as on a CUDA machine or in Colab.

    Nothing can run on that GPU; the point is that every test which expects the CPU pins it, and that no
    unit test starts work on a real GPU. Notebook kernels are separate processes and see the real torch.
    """
    if not SIMULATE_CUDA:
        return
    import types

    import torch

    t4 = types.SimpleNamespace(name="Tesla T4 (simulated)", total_memory=15_828_320_256, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=0: t4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: t4.name)
