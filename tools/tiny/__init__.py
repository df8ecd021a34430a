"""Offline tiny random-weight pipelines for tests and CI.

`build_all(out_dir)` writes one folder per model with `save_pretrained`; each loads with
the plain `DiffusionPipeline.from_pretrained(folder)` (or `AutoModel` for the VAE), so the
notebooks exercise the real loading path without the Hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from . import families
from .pipelines import (
    tiny_qwen_image,
    tiny_stable_diffusion,
    tiny_stable_diffusion_xl,
    tiny_vae,
    tiny_wan_i2v,
    tiny_wan_t2v,
)

BUILDERS = {
    "qwen-image": tiny_qwen_image,
    "sd": tiny_stable_diffusion,
    "sd-safety": lambda seed=0: tiny_stable_diffusion(seed, with_safety_checker=True),
    "sdxl": tiny_stable_diffusion_xl,
    "vae-alt": lambda seed=0: tiny_vae(seed + 100, force_upcast=False),
    "sd-components": tiny_stable_diffusion,
    "wan-t2v": tiny_wan_t2v,
    "wan-i2v": tiny_wan_i2v,
}


def _add_kit_components(folder: Path) -> None:
    """The community-components repository: tiny SD weights plus the code in community/kit_components."""
    from helpers.community import COMMUNITY, add_remote_code

    add_remote_code(folder, COMMUNITY / "kit_components",
                    pipeline=("pipeline_kit_components", "KitComponentsPipeline"),
                    components={"unet": ("kit_counting_unet", "KitCountingUNet2DConditionModel")})


FINISHERS = {"sd-components": _add_kit_components}

# The family matrix's models (`make families`, tests/test_families.py): built on request, never by `build_all`.
FAMILY_BUILDERS = {
    "sd3": families.tiny_sd3,
    "flux": families.tiny_flux,
    "pixart-sigma": families.tiny_pixart_sigma,
    "sana": families.tiny_sana,
    "lumina2": families.tiny_lumina2,
    "kandinsky3": families.tiny_kandinsky3,
    "cogvideox": families.tiny_cogvideox,
    "ltx-video": families.tiny_ltx_video,
    "ltx-i2v": families.tiny_ltx_i2v,
    "mochi": families.tiny_mochi,
}
STAMP_FILE = "tiny.json"


def _source_fingerprint() -> str:
    """Hash of the builder code (and the community code it ships): a change to it rebuilds the cached models."""
    from helpers.community import COMMUNITY

    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")) + sorted((COMMUNITY / "kit_components").rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def build(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build one tiny model into `out_dir/name` (written to a temp folder, then moved)."""
    builders = {**BUILDERS, **FAMILY_BUILDERS}
    if name not in builders:
        raise ValueError(f"Unknown tiny model {name!r}. Choose one of: {', '.join(builders)}.")
    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    builders[name](seed).save_pretrained(staging)
    if name in FINISHERS:
        FINISHERS[name](staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """One builder at a time per cache folder: parallel test workers wait, then reuse what the first built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_all(out_dir: str | Path, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Build every tiny model into `out_dir`; reuse them when the builder code is unchanged."""
    with _exclusive(Path(out_dir)):
        return _build_all(Path(out_dir), seed, force)


def _build_all(out_dir: Path, seed: int, force: bool) -> dict[str, Path]:
    stamp = {"fingerprint": _source_fingerprint(), "seed": seed, "models": sorted(BUILDERS)}
    stamp_path = out_dir / STAMP_FILE
    paths = {name: out_dir / name for name in BUILDERS}
    if not force and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        if all(path.is_dir() for path in paths.values()):
            return paths
    for name in BUILDERS:
        build(name, out_dir, seed)
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return paths


def build_families(out_dir: str | Path, names=None, seed: int = 0) -> dict[str, Path]:
    """Build the family matrix's tiny models into `out_dir` (default: all); a model whose stamp matches the
    builder code is reused. Each has its own stamp, so a subset and the whole matrix share one cache."""
    with _exclusive(Path(out_dir)):
        return _build_families(Path(out_dir), names, seed)


def _build_families(out_dir: Path, names, seed: int) -> dict[str, Path]:
    fingerprint = _source_fingerprint()
    paths = {}
    for name in names or FAMILY_BUILDERS:
        stamp = {"fingerprint": fingerprint, "seed": seed, "model": name}
        stamp_path = out_dir / f"{name}.{STAMP_FILE}"
        if not (stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp and (out_dir / name).is_dir()):
            build(name, out_dir, seed)
            stamp_path.write_text(json.dumps(stamp, indent=2))
        paths[name] = out_dir / name
    return paths
