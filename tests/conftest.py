"""Shared fixtures: an isolated Hugging Face home and token, offline Hub, tiny models built once."""

from __future__ import annotations

import os
import re

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
    yield home
    from huggingface_hub.utils import close_session

    close_session()  # huggingface_hub 1.x (httpx) reads proxy variables when its client is made: none outlives a test


@pytest.fixture(scope="session")
def tiny() -> dict:
    """The tiny models, built once per test run into .cache/tiny (rebuilt when the builder code changes)."""
    return build_all(runner.TINY_DIR)


PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's bar as text: " 50%|#####     | 1/2 [00:01<00:01, 1.2it/s]"


def progress_bar_cells(executed) -> list[str]:
    """Ids of the cells of an executed notebook that drew a tqdm bar: as text on a stream, or as the
    text/plain of tqdm.notebook's widget."""
    import nbformat

    found = []
    for cell in nbformat.read(executed, as_version=4).cells:
        texts = [o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", [])]
        if any(PROGRESS_BAR.search(text) for text in texts):
            found.append(cell.get("id"))
    return found


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


# --- A local Hub on 127.0.0.1 (tests/localhub.py): the Hub paths run for real, never off this machine ---

HUB_WRITER_TOKEN = "hf_LocalHubWriter" + "Z" * 20  # accepted for uploads and gated repos; never printed by the kit
COMPONENTS_REPO = "kit-community/kit-components"  # a community-components repo, published at a fixed commit
PREVIEWS_REPO = "kit-community/kit-previews"  # a Hub repo holding pipeline.py (custom_pipeline="<user>/<repo>")
GATED_REPO = "black-forest-labs/FLUX.1-dev"  # gated on the real Hub too
MIRROR = "diffusers/community-pipelines-mirror"
HUB_MODELS = {"stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-safety", "Qwen/Qwen-Image": "qwen-image"}


@pytest.fixture(scope="session")
def local_hub_server(tiny):
    """One server per session with the tiny models under their real ids, a components repo at two commits
    (the second changes its code), a Hub custom pipeline, the community mirror and a gated repo."""
    import diffusers
    from localhub import LocalHub

    from helpers.community import COMMUNITY

    hub = LocalHub(tokens={HUB_WRITER_TOKEN})
    for repo_id, name in HUB_MODELS.items():
        hub.add_folder(repo_id, tiny[name], message="tiny stand-in")
    hub.pinned = {"components": hub.add_folder(COMPONENTS_REPO, tiny["sd-components"], message="publish")}
    unet_code = (tiny["sd-components"] / "unet" / "kit_counting_unet.py").read_bytes()
    hub.add_files(COMPONENTS_REPO, {"unet/kit_counting_unet.py": unet_code + b"\nCHANGED_AFTER_PIN = True\n"},
                  message="a later change to the code")
    hub.pinned["previews"] = hub.add_folder(PREVIEWS_REPO, COMMUNITY / "kit_previews", message="pipeline.py")
    # Stand-in content: the kit's prompt-weighting pipeline under the name of diffusers' LPW community pipeline.
    release = "v" + ".".join(diffusers.__version__.split(".")[:3])
    weighting = (COMMUNITY / "kit_prompt_weighting.py").read_bytes()
    hub.pinned["mirror"] = hub.add_files(MIRROR, {f"{release}/lpw_stable_diffusion.py": weighting,
                                                  "main/lpw_stable_diffusion.py": weighting}, repo_type="dataset")
    hub.repo(GATED_REPO, gated=True)
    hub.add_files(GATED_REPO, {"model_index.json": b'{"_class_name": "FluxPipeline"}'})
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(local_hub_server, monkeypatch):
    """This test talks to the local Hub: HF_ENDPOINT points at it (set in the environment, and in the constants
    huggingface_hub read when it was imported), the Hub is online, and nothing else can be reached."""
    from huggingface_hub import constants, hf_api

    from helpers import hub as kit_hub

    url = local_hub_server.url
    for name, value in runner.hub_environment(url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    kit_hub.hub_reachable.cache_clear()
    offbox_before = len(local_hub_server.offbox)
    yield local_hub_server
    kit_hub.hub_reachable.cache_clear()
    assert local_hub_server.offbox[offbox_before:] == [], "a request tried to leave the machine"
