"""Memory facts about pipelines: component sizes and dtypes, shared weights, RAM/VRAM deltas."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    class_name: str
    params: int
    bytes: int
    dtype: str
    device: str


def component_table(pipe) -> list[ComponentInfo]:
    """Parameter count, weight bytes, dtype and device of each torch component (tied weights counted once)."""
    rows = []
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        params = list(module.parameters())
        rows.append(ComponentInfo(name, type(module).__name__, sum(p.numel() for p in params),
                                  sum(p.numel() * p.element_size() for p in params),
                                  str(params[0].dtype).removeprefix("torch.") if params else "-",
                                  str(params[0].device) if params else "-"))
    return rows


def format_table(pipe) -> str:
    """`component_table(pipe)` as aligned text, with a total; `pipe` may also be rows (planning.component_sizes)."""
    rows = component_table(pipe) if hasattr(pipe, "components") else pipe
    lines = [f"{'component':16s} {'class':36s} {'params':>14s} {'MB':>10s} {'dtype':9s} device"]
    for row in rows:
        lines.append(f"{row.name:16s} {row.class_name:36s} {row.params:>14,d} {row.bytes / 2**20:>10.1f} "
                     f"{getattr(row, 'dtype', '-'):9s} {getattr(row, 'device', '-')}")
    total = sum(row.bytes for row in rows)
    lines.append(f"{'total':16s} {'':36s} {sum(r.params for r in rows):>14,d} {total / 2**20:>10.1f}")
    return "\n".join(lines)


def shared_components(a, b) -> dict[str, bool]:
    """For each torch component the two pipelines both have: is every parameter the same storage (data_ptr)?"""
    for pipe in (a, b):
        if not hasattr(pipe, "components"):
            raise TypeError(f"shared_components needs diffusers pipelines; got a {type(pipe).__name__}.")
    left, right = ({name: {p.data_ptr() for p in module.parameters()} for name, module in pipe.components.items()
                    if isinstance(module, torch.nn.Module)} for pipe in (a, b))
    return {name: left[name] == right[name] for name in sorted(left.keys() & right.keys())}


@dataclass
class MemoryDelta:
    ram_mb: float = 0.0
    cuda_mb: float | None = None

    def __str__(self) -> str:
        cuda = f", VRAM {self.cuda_mb:+.1f} MB" if self.cuda_mb is not None else ""
        return f"RAM {self.ram_mb:+.1f} MB{cuda}"


@contextmanager
def measure():
    """`with measure() as delta:` ... then `delta` holds the RAM (RSS) and VRAM growth of the block."""
    import psutil

    def now() -> tuple[float, float | None]:  # this process's RSS, and the CUDA memory torch allocated (MB)
        gc.collect()
        cuda = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return psutil.Process().memory_info().rss / 2**20, cuda

    (ram, cuda), delta = now(), MemoryDelta()
    yield delta
    ram_after, cuda_after = now()
    delta.ram_mb = ram_after - ram
    if cuda_after is not None:
        delta.cuda_mb = cuda_after - cuda


def module_dtypes(pipe) -> dict[str, torch.dtype]:
    """The dtype of every torch module of a pipeline, by component name."""
    return {name: next(module.parameters()).dtype for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) and any(True for _ in module.parameters())}


def quantized_components(pipe) -> list[str]:
    """Components loaded quantized (bitsandbytes, torchao, quanto, GGUF): diffusers marks them `is_quantized`."""
    return [name for name, module in pipe.components.items() if getattr(module, "is_quantized", False)]
