import os
import stat
from concurrent.futures import ProcessPoolExecutor

import pytest
from PIL import Image

from helpers import __version__, outputs


def red(size=16):
    return Image.new("RGB", (size, size), "red")


def test_metadata_round_trip(tmp_path):
    path = outputs.save_image(red(), tmp_path, "fox", {"prompt": "a fox", "seed": 3})
    assert path == tmp_path / "fox.png"
    assert outputs.read_metadata(path) == {"prompt": "a fox", "seed": 3}


def test_generation_metadata_carries_versions():
    import diffusers

    class FakePipe:
        pass

    import torch

    call = {"prompt": "p", "height": 32, "generator": torch.Generator("cpu").manual_seed(7),
            "image": Image.new("RGB", (8, 4)), "latents": torch.zeros(1, 4, 2, 2), "prompt_embeds": None}
    meta = outputs.generation_metadata(FakePipe(), "org/model", call, variant="img2img")
    assert meta == {
        "model_id": "org/model", "pipeline": "FakePipe",
        "parameters": {"prompt": "p", "height": 32, "seed": 7, "prompt_embeds": None},
        "inputs": {"image": "image 8x4 RGB", "latents": "tensor (1, 4, 2, 2) torch.float32"},
        "context": {"variant": "img2img"},
        "kit_version": __version__, "diffusers_version": diffusers.__version__, "torch_version": torch.__version__,
    }


def test_never_overwrites(tmp_path):
    first = outputs.save_image(red(), tmp_path, "img", {"n": 1})
    before = first.read_bytes()
    second = outputs.save_image(Image.new("RGB", (16, 16), "blue"), tmp_path, "img", {"n": 2})
    assert (first.name, second.name) == ("img.png", "img-1.png")
    assert first.read_bytes() == before
    assert outputs.read_metadata(second) == {"n": 2}


def _save_many(args):
    folder, worker = args
    return [str(outputs.save_image(red(), folder, "same", {"worker": worker, "i": i})) for i in range(10)]


def test_concurrent_writers_never_clobber_each_other(tmp_path):
    with ProcessPoolExecutor(max_workers=2) as pool:
        paths = [p for batch in pool.map(_save_many, [(tmp_path, 0), (tmp_path, 1)]) for p in batch]
    assert len(set(paths)) == 20
    written = {(m["worker"], m["i"]) for m in map(outputs.read_metadata, paths)}
    assert written == {(w, i) for w in (0, 1) for i in range(10)}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == []


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = outputs.save_image(red(), tmp_path, "perm")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("stem, name", [("a photo / of a cat?", "a-photo-of-a-cat.png"), ("..x..", "x.png")])
def test_names_are_cleaned(tmp_path, stem, name):
    assert outputs.save_image(red(), tmp_path, stem).name == name


def test_empty_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must contain letters or digits"):
        outputs.save_image(red(), tmp_path, "///")


def test_read_metadata_of_a_plain_png(tmp_path):
    red().save(tmp_path / "plain.png")
    assert outputs.read_metadata(tmp_path / "plain.png") == {}


def test_grid_layout_and_labels():
    grid = outputs.make_grid([red(16), red(16), red(16)], labels=["a", "b", "c"], cols=2)
    assert grid.size == (32, 2 * (16 + 14))
    assert outputs.make_grid([red(16)] * 5).size == (64, 32)


def test_grid_bad_input():
    with pytest.raises(ValueError, match="at least one image"):
        outputs.make_grid([])
    with pytest.raises(ValueError, match="Got 1 labels for 2 images"):
        outputs.make_grid([red(), red()], labels=["a"])


def test_gallery_never_overwrites_an_index_the_kit_did_not_write(tmp_path, capsys):
    outputs.save_image(red(), tmp_path, "one", {"parameters": {"prompt": "a fox", "seed": 1}})
    (tmp_path / "bad.png").write_text("not an image")  # a user's file named like a PNG
    mine = tmp_path / "index.html"
    mine.write_text("<p>my own page</p>")
    written = outputs.write_gallery(tmp_path)
    assert written == tmp_path / "kit-gallery.html" and mine.read_text() == "<p>my own page</p>"
    assert "a fox" in written.read_text() and "1 images" in written.read_text()
    assert "bad.png' is not a readable PNG" in capsys.readouterr().out
    assert outputs.write_gallery(tmp_path) == written  # the kit's own page is replaced on the next run
    mine.unlink()
    assert outputs.write_gallery(tmp_path) == mine  # with no user file there, index.html is the kit's again
    assert outputs.write_gallery(tmp_path) == mine


def test_gallery_write_is_all_or_nothing(tmp_path, monkeypatch):
    outputs.save_image(red(), tmp_path, "one")
    first = outputs.write_gallery(tmp_path).read_text()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", disk_full)
    outputs.save_image(red(), tmp_path, "two")
    with pytest.raises(OSError, match="No space left"):
        outputs.write_gallery(tmp_path)
    assert (tmp_path / "index.html").read_text() == first  # the old page stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "one.png", "two.png"]  # no temp file left


def test_save_image_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = outputs.save_image(red(), "~/pictures", "fox")
    assert path == tmp_path / "pictures" / "fox.png" and path.is_file()


def test_write_atomically_writes_bytes_and_text_with_the_umask(tmp_path):
    target = tmp_path / "notes.txt"
    previous = os.umask(0o027)
    try:
        assert outputs.write_atomically(target, "first") == target
    finally:
        os.umask(previous)
    assert target.read_text() == "first" and stat.S_IMODE(target.stat().st_mode) == 0o640
    outputs.write_atomically(target, b"\x00second")
    assert target.read_bytes() == b"\x00second" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_write_atomically_replaces_a_link_not_what_it_points_to(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "manifest.json").symlink_to(outside)
    outputs.write_atomically(folder / "manifest.json", "{}")
    assert outside.read_text() == "the user's file"
    assert not (folder / "manifest.json").is_symlink() and (folder / "manifest.json").read_text() == "{}"


def test_write_atomically_leaves_the_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text("old")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        outputs.write_atomically(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_sha256_file_matches_hashlib_over_several_blocks(tmp_path):
    import hashlib

    data = os.urandom(2**20 * 2 + 123)  # more than one 1 MiB block, and a partial one
    (tmp_path / "blob").write_bytes(data)
    assert outputs.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_a_file_that_is_no_image_is_a_kit_error_naming_it(tmp_path):
    from helpers.errors import KitError, NotAnImageError

    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(NotAnImageError, match="bad.png' is not a readable PNG") as caught:
        outputs.read_metadata(tmp_path / "bad.png")
    assert isinstance(caught.value, KitError) and isinstance(caught.value, ValueError)
