"""The Hub paths of the seeds, run for real against the local Hub (tests/localhub.py) on 127.0.0.1.

snapshot_download with the kit's patterns, a community pipeline by name with custom_revision, a Hub repo
as custom_pipeline, remote code at a pinned commit, a gated 401, and publish-then-load. The `hub` fixture
fails any test that tried to reach another host (PyPI, huggingface.co).
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import COMPONENTS_REPO, GATED_REPO, HUB_WRITER_TOKEN, MIRROR, PREVIEWS_REPO

from helpers import community, loading, memory
from helpers import hub as kit_hub
from helpers.errors import GatedModelError, InvalidParameterError, LocalPathNotFoundError

ROOT = Path(__file__).resolve().parent.parent
SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def small_call(pipe, **extra):
    return pipe("a (red fox:1.3)", num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), **extra)


def test_the_local_hub_serves_repos_at_fixed_commits(hub):
    from huggingface_hub import model_info

    info = model_info(COMPONENTS_REPO, revision=hub.pinned["components"])
    assert info.sha == hub.pinned["components"]
    assert model_info(COMPONENTS_REPO).sha != hub.pinned["components"]  # main moved on after the pin
    assert len(info.sha) == 40 and {s.rfilename for s in info.siblings} >= {"model_index.json", "unet/config.json"}


def test_snapshot_download_takes_only_the_pipelines_files(hub, tmp_path):
    """Seed 000: snapshot_download("Qwen/Qwen-Image"), then from_pretrained of the folder."""
    from diffusers import QwenImagePipeline
    from huggingface_hub import snapshot_download

    decoys = {"transformer/diffusion_pytorch_model.fp16.safetensors": b"not loaded", "onnx/model.onnx": b"no",
              "text_encoder/pytorch_model.bin": b"a second copy of the weights"}
    repo = hub.repo("Qwen/Qwen-Image")
    decoyed = hub.add_files("Qwen/Qwen-Image", decoys, message="files a pipeline never loads")
    try:
        index = kit_hub.read_model_index("Qwen/Qwen-Image")
        patterns = kit_hub.pipeline_file_patterns(index)
        folder = Path(snapshot_download("Qwen/Qwen-Image", local_dir=tmp_path / "qwen", **patterns))
    finally:
        repo.commits.remove(next(c for c in repo.commits if c.oid == decoyed))
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}
    served = set(hub.repo("Qwen/Qwen-Image").head.files) | set(decoys)
    components = {name for name, spec in index.items() if isinstance(spec, list) and not name.startswith("_")}
    wanted = {f for f in served if f == "model_index.json" or (f.split("/")[0] in components and f not in decoys)}
    assert got == wanted
    assert not any(path in "".join(p for _, p, _ in hub.requests) for path in decoys)
    pipe = QwenImagePipeline.from_pretrained(folder, dtype=torch.float32)
    assert type(pipe).__name__ == "QwenImagePipeline"


def test_community_pipeline_by_name_with_custom_revision(hub, tiny, capsys):
    """Seed 001: custom_pipeline="<name>", custom_revision=...; fetched from the mirror dataset, no PyPI."""
    import diffusers

    release = ".".join(diffusers.__version__.split(".")[:3])
    pipe = community.load_community_pipeline(SD, "lpw_stable_diffusion", custom_revision=release, dtype="float32",
                                             device_map=None)
    served = hub.repo(MIRROR, "dataset").head.files[f"v{release}/lpw_stable_diffusion.py"]
    assert f"sha256 {hashlib.sha256(served).hexdigest()}" in capsys.readouterr().out  # shown before it ran
    assert type(pipe).__name__ == "KitPromptWeightingPipeline"  # the stand-in content of the mirror
    assert small_call(pipe).images[0].size == (32, 32)
    community.download_community_pipeline("lpw_stable_diffusion", "main")
    asked = [path for _, path, _ in hub.requests if "/resolve/" in path]  # same bytes: HEAD only the 2nd time
    assert any(path.endswith(f"/v{release}/lpw_stable_diffusion.py") for path in asked)
    assert any(path.endswith("/main/lpw_stable_diffusion.py") for path in asked)
    with pytest.raises(InvalidParameterError, match="has no v0.1.0/lpw_stable_diffusion.py"):
        community.download_community_pipeline("lpw_stable_diffusion", "0.1.0")


def test_diffusers_by_name_path_asks_pypi_first_and_then_runs_the_file_the_kit_audited(hub, tiny, monkeypatch):
    """What the kit avoids, shown: diffusers' by-name load asks PyPI (urllib, no timeout) before the mirror.

    Through the refusing proxy that request fails at once instead of reaching PyPI. Given the release list
    locally (the one stand-in here: PyPI is not the Hub), the literal diffusers call fetches from the local
    mirror exactly the file the kit fetched and hashed.
    """
    import diffusers
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    before = len(hub.offbox)
    with pytest.raises(OSError):
        dynamic_modules_utils.get_diffusers_versions()
    assert hub.offbox[before:] == ["CONNECT pypi.org:443"]
    del hub.offbox[before:]

    release = ".".join(diffusers.__version__.split(".")[:3])
    audited = community.download_community_pipeline("lpw_stable_diffusion", release)
    monkeypatch.setattr(dynamic_modules_utils, "get_diffusers_versions", lambda: [release])
    pipe = DiffusionPipeline.from_pretrained(tiny["sd"], custom_pipeline="lpw_stable_diffusion",
                                             custom_revision=release, dtype=torch.float32)
    assert sha256(inspect.getfile(type(pipe))) == sha256(audited)


def test_hub_repo_as_custom_pipeline_is_pinned_and_audited(hub, tiny, capsys):
    """custom_pipeline="<user>/<repo>" (a repo holding pipeline.py) loads only at a full commit."""
    commit = hub.pinned["previews"]
    with pytest.raises(LocalPathNotFoundError, match="custom_revision='<40-hex commit>'"):
        community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=PREVIEWS_REPO, device_map=None)
    with pytest.raises(community.RemoteCodeRefused, match="custom_revision='main' is not valid: needs a full"):
        community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=PREVIEWS_REPO, custom_revision="main",
                                            device_map=None)
    assert not any(p.endswith("pipeline.py") for _, p, _ in hub.requests if PREVIEWS_REPO in p)  # refused first

    pipe = community.load_remote_code_pipeline(tiny["sd"], custom_pipeline=PREVIEWS_REPO, custom_revision=commit,
                                               dtype="float32", device_map=None)
    expected = sha256(ROOT / "community" / "kit_previews" / "pipeline.py")
    assert f"sha256 {expected}" in capsys.readouterr().out
    assert type(pipe).__name__ == "KitPreviewPipeline"
    assert f"kit-community--kit-previews/{commit}" in inspect.getfile(type(pipe))  # diffusers' copy, by commit
    previews = small_call(pipe, preview_every=1).previews
    assert [step for step, _ in previews] == list(range(1, pipe.num_timesteps + 1))

    again = community.from_pipe(pipe, PREVIEWS_REPO, custom_revision=commit, pinned={"pipeline.py": expected})
    assert set(memory.shared_components(pipe, again).values()) == {True}
    with pytest.raises(community.RemoteCodeChanged, match="pipeline.py"):
        community.from_pipe(pipe, PREVIEWS_REPO, custom_revision=commit, pinned={"pipeline.py": "0" * 64})


def test_remote_code_runs_only_at_the_pinned_commit(hub, capsys):
    """Seed 001: from_pretrained("user/repo", trust_remote_code=True, revision="<commit>")."""
    pinned_commit = hub.pinned["components"]
    with pytest.raises(community.RemoteCodeRefused, match="revision='main'"):
        community.load_remote_code_pipeline(COMPONENTS_REPO, revision="main", device_map=None)
    with pytest.raises(community.RemoteCodeRefused, match="revision='1234567'"):  # the seed's short hash
        community.load_remote_code_pipeline(COMPONENTS_REPO, revision="1234567", device_map=None)

    pipe = community.load_remote_code_pipeline(COMPONENTS_REPO, revision=pinned_commit, dtype="float32",
                                               device_map=None)
    manifest = community.manifest(community.code_files(COMPONENTS_REPO, revision=pinned_commit))
    assert type(pipe).__name__ == "KitComponentsPipeline"
    assert not hasattr(sys.modules[type(pipe.unet).__module__], "CHANGED_AFTER_PIN")  # the pinned code ran
    out = small_call(pipe)
    assert out.unet_calls == pipe.num_timesteps
    unet = community.load_remote_code_component(COMPONENTS_REPO, "unet", revision=pinned_commit, dtype="float32")
    assert type(unet).__name__ == "KitCountingUNet2DConditionModel"

    head = hub.repo(COMPONENTS_REPO).head.oid
    with pytest.raises(community.RemoteCodeChanged, match="unet/kit_counting_unet.py"):
        community.load_remote_code_pipeline(COMPONENTS_REPO, revision=head, pinned=manifest, device_map=None)


def test_gated_repo_answers_401_and_the_kit_says_what_to_do(hub, monkeypatch):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    with pytest.raises(GatedRepoError) as raw:
        hf_hub_download(GATED_REPO, "model_index.json")
    assert raw.value.response.status_code == 401
    for call in (lambda: kit_hub.read_model_index(GATED_REPO),
                 lambda: community.load_remote_code_pipeline(GATED_REPO, revision="a" * 40, device_map=None)):
        with pytest.raises(GatedModelError) as refused:
            call()
        message = str(refused.value)
        assert "is gated" in message and "401" in message and "accept the licence" in message
        assert f"{hub.url}/{GATED_REPO}" in message and "HF_TOKEN" in message and "hf auth login" in message
    monkeypatch.setenv("HF_TOKEN", HUB_WRITER_TOKEN)  # a token whose owner accepted the terms
    assert kit_hub.read_model_index(GATED_REPO)["_class_name"] == "FluxPipeline"


def test_publish_components_repo_then_load_it_back_by_id_at_its_commit(hub, tiny, tmp_path, monkeypatch, capsys):
    """Seed 001: push_to_hub drops the code; save, add the code back, upload_folder, load at the commit."""
    from huggingface_hub import HfApi, create_repo, list_repo_files, upload_folder
    from huggingface_hub.errors import HfHubHTTPError

    folder = tmp_path / "kit-components"
    shutil.copytree(tiny["sd-components"], folder)
    for code in folder.rglob("*.py"):
        code.unlink()  # what save_pretrained leaves
    with pytest.raises(LocalPathNotFoundError, match="pipeline_kit_components.py, unet/kit_counting_unet.py"):
        community.check_publishable(folder)
    community.add_remote_code(folder, community.COMMUNITY / "kit_components",
                              pipeline=("pipeline_kit_components", "KitComponentsPipeline"),
                              components={"unet": ("kit_counting_unet", "KitCountingUNet2DConditionModel")})
    audited = community.manifest(community.check_publishable(folder))

    with pytest.raises(HfHubHTTPError) as anonymous:
        create_repo("kit-tester/kit-components")
    assert anonymous.value.response.status_code == 401
    monkeypatch.setenv("HF_TOKEN", HUB_WRITER_TOKEN)
    repo_id = create_repo("kit-tester/kit-components", exist_ok=True).repo_id
    commit = upload_folder(repo_id=repo_id, folder_path=folder, commit_message="kit components").oid
    assert repo_id == "kit-tester/kit-components" and len(commit) == 40
    monkeypatch.delenv("HF_TOKEN")  # loading needs no token

    pipe = community.load_remote_code_pipeline(repo_id, revision=commit, pinned=audited, dtype="float32",
                                               device_map=None)
    assert "all files match the pinned manifest" in capsys.readouterr().out
    assert type(pipe).__name__ == "KitComponentsPipeline"
    assert small_call(pipe).unet_calls == pipe.num_timesteps

    monkeypatch.setenv("HF_TOKEN", HUB_WRITER_TOKEN)
    pipe.push_to_hub("kit-tester/pushed")  # diffusers' own push: weights and configs, no code
    pushed = list_repo_files("kit-tester/pushed")
    assert "model_index.json" in pushed and "unet/config.json" in pushed
    assert not [name for name in pushed if name.endswith(".py")]
    assert HUB_WRITER_TOKEN not in capsys.readouterr().out
    assert HfApi().whoami()["name"] == "kit-tester"


def test_by_name_pipeline_on_the_same_weights_with_from_pipe(hub, tiny, tmp_path):
    """Seed 001: DiffusionPipeline.from_pipe(pipeline_sd, custom_pipeline="lpw_stable_diffusion")."""
    base = loading.load_pipeline(tiny["sd"], dtype="float32", device_map=None)
    cached = community.download_community_pipeline("lpw_stable_diffusion", "main")  # a blob in the HF cache
    script = Path(shutil.copyfile(cached, tmp_path / "lpw_stable_diffusion.py"))  # a .py of our own to pass
    lpw = community.from_pipe(base, script, pinned={script.name: sha256(script)})
    assert type(lpw).__name__ == "KitPromptWeightingPipeline"
    assert set(memory.shared_components(base, lpw).values()) == {True}


def test_snapshot_patterns_follow_the_plans_variant(hub, tmp_path):
    """SD and SDXL ship fp32 files plus an fp16 variant: the plan counts the variant in half precision, so
    the snapshot must hold the variant's weights (not both copies) and from_pretrained(variant=) load them."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file, save

    head = hub.repo(SD).head.files
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    scratch = tmp_path / "unet.safetensors"
    scratch.write_bytes(head[unet_file])
    half = {name: tensor.half() for name, tensor in load_file(scratch).items()}
    variant_file = "unet/diffusion_pytorch_model.fp16.safetensors"
    commit = hub.add_files(SD, {variant_file: save(half)}, message="an fp16 variant of the UNet")
    repo = hub.repo(SD)
    try:
        default = kit_hub.snapshot_patterns(SD)
        fp16 = kit_hub.snapshot_patterns(SD, variant="fp16")
        assert "*.fp16.*" in default["ignore_patterns"] and "*.fp16.*" not in fp16["ignore_patterns"]
        assert unet_file in fp16["ignore_patterns"] and variant_file not in fp16["ignore_patterns"]
        assert "vae/diffusion_pytorch_model.safetensors" not in fp16["ignore_patterns"]  # no vae variant: default
        before = len(hub.requests)
        folder = Path(snapshot_download(SD, local_dir=tmp_path / "sd", **fp16))
        fetched = [path for _, path, _ in hub.requests[before:]]
        assert any(path.endswith(variant_file) for path in fetched)
        assert not any(path.endswith(unet_file) for path in fetched)
        pipe = DiffusionPipeline.from_pretrained(folder, variant="fp16", dtype=torch.float32)
    finally:
        repo.commits.remove(next(c for c in repo.commits if c.oid == commit))
    loaded = dict(pipe.unet.named_parameters())
    name = next(key for key in half if key in loaded)
    assert torch.equal(loaded[name].detach(), half[name].float())  # the fp16 file's values, as float32


def test_safety_model_id_hub_answers_become_parameter_errors(hub):
    """A repo without model_index.json (a standalone checker) is no pipeline; a missing repo is named as such,
    never a raw huggingface_hub traceback from the setup cell."""
    from helpers import validate

    hub.add_files("someone/standalone-checker", {"config.json": b"{}", "model.safetensors": b"x"})
    with pytest.raises(InvalidParameterError, match="safety_model_id='someone/standalone-checker'.*no pipeline"):
        validate.check({"safety_model_id": "someone/standalone-checker"})
    with pytest.raises(InvalidParameterError, match="no such repository"):
        validate.model_index("someone/never-created", "safety_model_id")


def test_weight_files_are_the_files_the_snapshot_downloads(hub, tmp_path, monkeypatch):
    """The plan sizes `hub.weight_files`; the download fetches what `snapshot_patterns` selects: the same files,
    with and without the plan's variant, online (the Hub's file metadata) and offline (the cached snapshot)."""
    from huggingface_hub import snapshot_download

    variant_file = "unet/diffusion_pytorch_model.fp16.safetensors"
    commit = hub.add_files(SD, {variant_file: b"x" * 1234, "onnx/model.onnx": b"never"}, message="variant, onnx")
    repo = hub.repo(SD)
    try:
        for variant in (None, "fp16"):
            sizes = kit_hub.weight_files(SD, variant=variant)
            cache = tmp_path / f"cache-{variant}"
            folder = Path(snapshot_download(SD, cache_dir=cache, **kit_hub.snapshot_patterns(SD, variant=variant)))
            got = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
            assert sizes == got and (variant_file in got) == (variant == "fp16") and "onnx/model.onnx" not in got
            with monkeypatch.context() as offline:
                offline.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
                offline.setattr(kit_hub, "hub_reachable", lambda: False)
                assert kit_hub.weight_files(SD, variant=variant) == got  # offline: the cached snapshot's files
        with pytest.raises(InvalidParameterError, match=r"variant='bf16' is not valid: the repository has no weight"):
            kit_hub.weight_files(SD, variant="bf16")  # as from_pretrained(variant="bf16") would fail
    finally:
        repo.commits.remove(next(c for c in repo.commits if c.oid == commit))


# --- the Hub failing (issue 22): one line naming host and file, never a deep traceback or a silent wait ---------

def _serve_instead(monkeypatch, target: str, answer):
    """The local Hub answers `target` (a file path in any repo) with `answer(handler, head)`; the rest as usual."""
    import localhub

    original = localhub._Handler._resolve

    def resolve(self, repo_type, repo_id, revision, path, head):
        if path == target and answer(self, head) is not None:
            return None
        return original(self, repo_type, repo_id, revision, path, head)

    monkeypatch.setattr(localhub._Handler, "_resolve", resolve)


def _fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))


def _status(status: int, message: str, headers: dict | None = None, on_head: bool = True):
    import localhub

    def answer(handler, head):
        if head and not on_head:
            return None  # the metadata request succeeds; the download gets the error
        if headers:
            handler._send(status, b'{"error": "%s"}' % message.encode(), {"X-Error-Message": message, **headers},
                          head=head)
            return True
        raise localhub.HubError(status, None, message)

    return answer


@pytest.mark.parametrize("status, message, expected", [
    (503, "Service Unavailable", "failed on {file} (HTTP 503: a server error, not your setup)"),
    (401, "Invalid credentials in Authorization header",
     "refused {file} (HTTP 401; no Hugging Face token was found): it asks for a token"),
])
def test_a_server_error_or_a_refused_token_is_one_line_naming_host_and_file(hub, tmp_path, monkeypatch, status,
                                                                              message, expected):
    from helpers.errors import HubRequestError

    _fresh_cache(monkeypatch, tmp_path)
    _serve_instead(monkeypatch, "model_index.json", _status(status, message))
    with pytest.raises(HubRequestError) as caught:
        kit_hub.read_model_index(SD)
    text = str(caught.value)
    host = hub.url.removeprefix("http://")
    assert f"The Hub at {host} " in text and expected.format(file=f"{SD}/model_index.json") in text
    assert "\n" not in text and "Fix:" in text


def test_a_cut_download_is_one_line_naming_host_and_file(hub, tmp_path, monkeypatch):
    from helpers.errors import HubRequestError

    def cut(handler, head):
        if head:
            return None
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True  # the body never comes: the connection closes under the client
        return True

    _fresh_cache(monkeypatch, tmp_path)
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # huggingface_hub's 1 s between its 5 resumes
    _serve_instead(monkeypatch, "model_index.json", cut)
    with pytest.raises(HubRequestError, match=rf"The download of {SD}/model_index.json from "
                       rf"{hub.url.removeprefix('http://')} was cut \(.*\)\. Fix: run again"):
        kit_hub.read_model_index(SD)


def test_a_long_retry_after_is_refused_not_slept_out(hub, tmp_path, monkeypatch):
    from helpers.errors import HubRequestError

    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    _fresh_cache(monkeypatch, tmp_path)
    _serve_instead(monkeypatch, "model_index.json",
                   _status(429, "Too Many Requests", {"Retry-After": "3600"}, on_head=False))
    with pytest.raises(HubRequestError, match=r"asks to wait 3601 s \(HTTP 429, Retry-After\).*Fix: run again later"):
        kit_hub.read_model_index(SD)
    assert slept == []  # refused before huggingface_hub's sleep
    _serve_instead(monkeypatch, "model_index.json", _status(429, "Too Many Requests", {"Retry-After": "2"}))
    with pytest.raises(HubRequestError, match=r"rate-limited .*/model_index.json \(HTTP 429, retry after 2 s\)"):
        kit_hub.read_model_index(SD)  # a short wait is huggingface_hub's to retry; then one line, not a traceback
    assert slept and all(seconds <= 3 for seconds in slept)


def _flip_one_bit(handler, head):
    """The true headers (ETag, X-Linked-Etag: the Hub's sha256), with the body's last bit flipped on the way."""
    def flipped(status, body=b"", headers=None, head=False):
        del handler._send  # this one answer only: the handler serves the connection's next requests too
        handler._send(status, body[:-1] + bytes([body[-1] ^ 1]) if body else body, headers, head)

    handler._send = flipped
    return None  # the usual answer, through the flipping sender


def _verify(folder: Path) -> str:  # notebook 02's two lines after its snapshot_download
    from huggingface_hub import HfApi

    return kit_hub.refuse_mismatches(SD, folder, HfApi().verify_repo_checksums(SD, local_dir=folder))


@pytest.mark.parametrize("into", ["cache", "local_dir"])
def test_a_weight_file_with_a_flipped_bit_is_refused_and_deleted_then_downloads_again(hub, tmp_path, monkeypatch,
                                                                                        into):
    from huggingface_hub import snapshot_download

    from helpers.errors import HubRequestError

    _fresh_cache(monkeypatch, tmp_path)
    weights = [name for name in kit_hub.weight_files(SD) if name.endswith(".safetensors")]
    target, patterns = weights[0], kit_hub.snapshot_patterns(SD)
    local_dir = tmp_path / "sd" if into == "local_dir" else None
    with monkeypatch.context() as flipped:
        _serve_instead(flipped, target, _flip_one_bit)
        folder = Path(snapshot_download(SD, local_dir=local_dir, **patterns))
        with pytest.raises(HubRequestError, match=rf"{SD}: {target} \(sha256 .* the Hub says .*deleted\. Fix: run"):
            _verify(folder)
    assert not (folder / target).exists()
    if into == "cache":
        assert all(sha256(blob) == blob.name for blob in (tmp_path / "cache").rglob("blobs/*") if len(blob.name) == 64)
    folder = Path(snapshot_download(SD, local_dir=local_dir, **patterns))  # the deleted file comes back, intact
    assert f"files of {SD} match the Hub's" in _verify(folder)
