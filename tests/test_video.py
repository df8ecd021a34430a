"""Video: the tiny Wan pipelines, MP4 + sidecar saving, the frame guards, the Wan architectures, and the
assembly guards notebook 04 shows (constructor given loading options, direct-import audit)."""

from __future__ import annotations

import contextlib
import json
import tempfile

import numpy as np
import papermill
import pytest
import torch
from diffusers import DiffusionPipeline, WanImageToVideoPipeline, WanPipeline
from diffusers.utils import load_image, load_video
from PIL import Image

from helpers import community, generation, loading, planning, validate, video
from helpers.errors import InvalidParameterError, LocalPathNotFoundError
from tools import runner
from tools.tiny.tokenizers import PROMPT_WORDS, build_t5_tokenizer

NOTEBOOK = runner.NOTEBOOKS / "07_video_pipelines.ipynb"


def generate(pipe, **extra):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red fox in the forest", num_inference_steps=2, height=32, width=32, num_frames=5,
                generator=torch.Generator().manual_seed(0), **extra).frames[0]


def test_tiny_wan_t2v_loads_with_from_pretrained_and_makes_frames(tiny):
    pipe = DiffusionPipeline.from_pretrained(tiny["wan-t2v"])
    assert type(pipe) is WanPipeline
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (4, 8)  # the real factors
    frames = generate(pipe)
    assert frames.shape == (5, 32, 32, 3) and np.isfinite(frames).all()


def test_tiny_wan_i2v_has_the_wan22_a14b_wiring(tiny):
    pipe = DiffusionPipeline.from_pretrained(tiny["wan-i2v"])
    assert type(pipe) is WanImageToVideoPipeline
    assert pipe.transformer_2 is not None and pipe.image_encoder is None and pipe.config.boundary_ratio == 0.9
    assert pipe.transformer.config.in_channels == 2 * pipe.vae.config.z_dim + pipe.vae_scale_factor_temporal
    frames = generate(pipe, image=Image.new("RGB", (32, 32), "red"))
    assert frames.shape == (5, 32, 32, 3)


def test_t5_tokenizer_has_the_umt5_layout_and_whole_prompt_words():
    tokenizer = build_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red fox").input_ids
    assert len(ids) == 4 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in tokenizer("Zebra 42!").input_ids  # unknown words fall back to characters
    assert all(len(tokenizer(word).input_ids) == 2 for word in PROMPT_WORDS)


def frames(count=5, value=0.5):
    return np.full((count, 16, 16, 3), value, dtype=np.float32)


def record_of(mp4):
    return json.loads(mp4.with_suffix(".json").read_text())


def test_save_video_writes_mp4_and_record_and_never_overwrites(tmp_path):
    first = video.save_video(frames(), tmp_path, "clip", {"pipeline": "WanPipeline", "parameters": {"seed": 1}}, fps=8)
    second = video.save_video(frames(value=0.2), tmp_path, "clip", {"parameters": {"seed": 2}}, fps=8)
    assert (first.name, second.name) == ("clip.mp4", "clip-1.mp4")
    assert record_of(first)["parameters"]["seed"] == 1
    assert record_of(second)["parameters"]["seed"] == 2
    assert record_of(first)["video"] == {"container": "mp4", "fps": 8, "frames": 5, "height": 16, "width": 16}
    decoded = np.stack([np.asarray(frame) for frame in load_video(str(first))])
    assert decoded.shape[0] == 5 and abs(decoded.mean() / 255 - 0.5) < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-1.json", "clip-1.mp4", "clip.json", "clip.mp4"]


def test_a_taken_record_name_moves_the_pair_on(tmp_path):
    (tmp_path / "clip.json").write_text("{}")  # someone else's file
    saved = video.save_video(frames(), tmp_path, "clip")
    assert saved.name == "clip-1.mp4" and (tmp_path / "clip.json").read_text() == "{}"
    assert not (tmp_path / "clip.mp4").exists()


@pytest.mark.parametrize("bad, words", [(frames(value=np.nan), "NaN"), (frames(value=0.0), "black")])
def test_wrong_frames_are_refused_and_nothing_is_left(tmp_path, bad, words):
    with pytest.raises(video.BadVideoError, match=words):
        video.save_video(bad, tmp_path, "clip")
    assert list(tmp_path.iterdir()) == []


def test_preview_is_an_animated_gif_with_every_frame():
    gif = video.animated_gif(np.linspace(0, 1, 5)[:, None, None, None] * np.ones((5, 8, 8, 3)), fps=10)
    with Image.open(__import__("io").BytesIO(gif)) as image:
        assert image.format == "GIF" and image.n_frames == 5


@pytest.mark.parametrize("count, ok", [(1, True), (5, True), (81, True), (80, False), (0, False), (True, False)])
def test_num_frames_follow_the_loaded_vae(tiny, count, ok):
    pipe = wan_t2v(tiny)
    if ok:
        generation.check_num_frames(pipe, count)
    else:
        with pytest.raises(InvalidParameterError, match="num_frames.*WanPipeline needs 4k \\+ 1 frames"):
            generation.check_num_frames(pipe, count)


@pytest.mark.parametrize("count, ok", [(7, True), (80, True), (0, False), (True, False), (2.5, False)])
def test_the_setup_cell_checks_only_a_whole_frame_count(count, ok):
    """The family's k*t+1 rule needs its VAE: before loading, only a whole number >= 1 is required."""
    if ok:
        validate.check({"num_frames": count})
    else:
        with pytest.raises(InvalidParameterError, match="num_frames.*whole number"):
            validate.check({"num_frames": count})


_WAN = {}


def wan_t2v(tiny):
    if "pipe" not in _WAN:
        _WAN["pipe"] = DiffusionPipeline.from_pretrained(tiny["wan-t2v"])
    return _WAN["pipe"]


@pytest.mark.parametrize("model, task, words", [
    ("sd", "text-to-video", "StableDiffusionPipeline is not a text-to-video pipeline.*notebook 02"),
    ("wan-i2v", "text-to-video", "WanImageToVideoPipeline is not a text-to-video pipeline.*i2v_model_id"),
    ("wan-t2v", "image-to-video", "WanPipeline is not an image-to-video pipeline.*t2v_model_id"),
])
def test_a_model_for_another_task_is_refused_from_model_index_alone(tiny, tmp_path, model, task, words):
    index_only = tmp_path / model  # model_index.json and nothing else: no weight can have been read
    index_only.mkdir()
    (index_only / "model_index.json").write_text((tiny[model] / "model_index.json").read_text())
    with pytest.raises(InvalidParameterError, match=words) as refused:
        video.video_pipeline_class(str(index_only), task)
    assert refused.value.name == video.TASKS[task]


def test_the_video_class_comes_from_model_index(tiny):
    assert video.video_pipeline_class(str(tiny["wan-t2v"]), "text-to-video") is WanPipeline
    assert video.video_pipeline_class(str(tiny["wan-i2v"]), "image-to-video") is WanImageToVideoPipeline


def test_input_image_rule(tmp_path):
    picture = tmp_path / "start.png"
    Image.new("RGB", (8, 8)).save(picture)
    validate.check({"input_image": str(picture)})
    validate.check({"input_image": ""})
    with pytest.raises(InvalidParameterError, match="input_image"):
        validate.check({"input_image": str(tmp_path / "missing.png")})


def test_notebook_defaults_are_the_real_wan_ids_and_get_tiny_stand_ins(tiny, tmp_path):
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert json.loads(declared["t2v_model_id"]["default"]) == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert json.loads(declared["i2v_model_id"]["default"]) == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    chosen = runner.headless_parameters(NOTEBOOK, tiny, tmp_path)
    assert chosen["t2v_model_id"] == str(tiny["wan-t2v"]) and chosen["i2v_model_id"] == str(tiny["wan-i2v"])
    assert chosen["num_frames"] == 5  # 4k + 1 for the tiny Wan


@pytest.mark.parametrize("model_id, transformers, low, high", [
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", ["transformer"], 1.2e9, 1.5e9),  # "1.3B"
    ("Wan-AI/Wan2.2-I2V-A14B-Diffusers", ["transformer", "transformer_2"], 13.5e9, 15e9),  # "A14B": 14B each
])
def test_planner_knows_the_wan_sizes(model_id, transformers, low, high):
    sizes = {size.name: size for size in planning.component_sizes(model_id)}
    assert sorted(sizes) == sorted(["text_encoder", "vae", *transformers])
    assert all(low < sizes[name].params < high for name in transformers)
    assert 5.5e9 < sizes["text_encoder"].params < 5.8e9  # the UMT5-XXL encoder (~5.7B)


def test_constructor_loading_options_are_refused_with_the_fix():
    from diffusers import StableDiffusionPipeline

    with pytest.raises(InvalidParameterError, match="device_map.*pipe.to") as refused:
        loading.check_constructor_arguments(StableDiffusionPipeline, unet=None, device_map="cuda")
    assert refused.value.name == "device_map"
    with pytest.raises(InvalidParameterError, match="torch_dtype"):
        loading.check_constructor_arguments(StableDiffusionPipeline, torch_dtype=torch.float16)
    loading.check_constructor_arguments(StableDiffusionPipeline, requires_safety_checker=False)  # a real argument


def test_direct_import_audit_shows_hashes_and_refuses_changed_code(tmp_path, capsys):
    code = tmp_path / "my_unet.py"
    code.write_text("X = 1\n")
    pinned = community.manifest(community.audit_imports([code], root=tmp_path))
    assert "my_unet.py" in capsys.readouterr().out and list(pinned) == ["my_unet.py"]
    code.write_text("X = 2\n")
    with pytest.raises(community.RemoteCodeChanged):
        community.audit_imports([code], root=tmp_path, pinned=pinned)
    with pytest.raises(LocalPathNotFoundError):
        community.audit_imports([tmp_path / "absent.py"])


def huge_png(path, width=20_000, height=20_000):
    """A valid 1x1 PNG whose header declares width x height (a decompression bomb's header)."""
    import struct
    import zlib

    Image.new("RGB", (1, 1), "red").save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def image_server(tmp_path):
    """An HTTP server on 127.0.0.1: /red.png, /big (a body over the cap), /slow (answers too late)."""
    import http.server
    import threading
    import time

    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(picture)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/slow"):
                time.sleep(2)
            if self.path.startswith("/trickle"):  # headers at once, then a byte every 0.2 s
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                with contextlib.suppress(OSError):
                    for _ in range(1000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2)
                return
            body = b"x" * 4096 if self.path.startswith("/big") else picture.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_start_image_from_a_file_and_a_url(tmp_path, image_server, monkeypatch):
    picture = tmp_path / "start.png"
    Image.new("RGB", (16, 8), "blue").save(picture)
    assert load_image(video.checked_start_image(str(picture))).size == (16, 8)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch := tmp_path / "tmp"))
    scratch.mkdir()
    fetched = load_image(video.checked_start_image(f"{image_server}/red.png"))
    assert fetched.mode == "RGB" and fetched.getpixel((0, 0)) == (255, 0, 0)
    assert list(scratch.iterdir()) == []  # a URL is read into memory: no temporary file is left behind


def test_a_bomb_header_is_refused_before_decoding(tmp_path):
    with pytest.raises(InvalidParameterError, match="input_image=.*declares more than 40,000,000 pixels"):
        video.checked_start_image(str(huge_png(tmp_path / "bomb.png")))
    with pytest.raises(InvalidParameterError, match="declares more than"):  # past PIL's own bomb limit too
        video.checked_start_image(str(huge_png(tmp_path / "bigger.png", 60_000, 60_000)))


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir() or p, "needs a regular image file"),
    (lambda p: (p.write_text("not an image"), p)[1], "is not an image file"),
])
def test_a_start_image_that_is_no_image_file_is_refused(tmp_path, make, words):
    with pytest.raises(InvalidParameterError, match=words):
        video.checked_start_image(str(make(tmp_path / "start.png")))


def test_a_url_has_a_size_cap_and_a_timeout_and_is_shown_without_secrets(image_server, monkeypatch):
    monkeypatch.setattr(video, "MAX_DOWNLOAD_BYTES", 1024)
    with pytest.raises(InvalidParameterError, match="larger than 1,024 bytes"):
        video.checked_start_image(f"{image_server}/big")
    monkeypatch.setattr(video, "DOWNLOAD_TIMEOUT_S", 0.3)
    secret = "hf_SecretCanary12345"
    url = image_server.replace("http://", f"http://user:{secret}@") + f"/slow?token={secret}"
    with pytest.raises(InvalidParameterError, match="could not be downloaded") as refused:
        video.checked_start_image(url)
    assert secret not in str(refused.value) and "***@127.0.0.1" in str(refused.value)


def test_the_t4_plan_reaches_from_pretrained_as_a_bitsandbytes_config(tiny, monkeypatch):
    """07's load cell is `from_pretrained(source, **loading.plan_kwargs(load_plan, source))`: on a T4 the plan
    quantizes Wan's text encoder and transformer to int8, and those kwargs carry exactly that."""
    from helpers import quantization

    load_plan = planning.plan_load("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "colab-t4")
    assert load_plan.fits and load_plan.quantized() == {"text_encoder": "int8", "transformer": "int8"}
    # In Colab, prepare() installs bitsandbytes before diffusers is imported; this CPU machine has none, so the
    # presence check stands in for that install. Nothing loads here: a T4 plan cannot run on this CPU.
    monkeypatch.setattr(quantization, "check_installed", lambda *args, **kwargs: None)
    load_kwargs = loading.plan_kwargs(load_plan, str(tiny["wan-t2v"]))
    assert load_kwargs["dtype"] == torch.float16 and load_kwargs["device_map"] == "cuda"
    mapping = load_kwargs["quantization_config"].quant_mapping
    assert set(mapping) == {"text_encoder", "transformer"}
    assert all(type(config).__name__ == "BitsAndBytesConfig" and config.load_in_8bit for config in mapping.values())


def test_a_url_that_trickles_ends_at_the_deadline_with_the_bytes_so_far(image_server, monkeypatch):
    import time

    monkeypatch.setattr(video, "DOWNLOAD_DEADLINE_S", 1)
    started = time.monotonic()
    with pytest.raises(InvalidParameterError, match=r"input_image=.*/trickle.* stalled: \d+ bytes in 1 s"):
        video.checked_start_image(f"{image_server}/trickle")
    assert time.monotonic() - started < 5  # the per-read timeout (30 s) alone would never end it
