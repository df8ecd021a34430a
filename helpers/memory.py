"""Memory facts about loaded pipelines: which weights are shared between two pipelines."""

from __future__ import annotations

import torch


def parameter_pointers(pipe) -> dict[str, set[int]]:
    """The storage address of every parameter, by component, for the torch modules of a pipeline."""
    return {
        name: {p.data_ptr() for p in module.parameters()}
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def shared_components(a, b) -> dict[str, bool]:
    """For each torch component the two pipelines both have: is every parameter the same storage?"""
    left, right = parameter_pointers(a), parameter_pointers(b)
    return {name: left[name] == right[name] for name in left.keys() & right.keys()}


def shares_weights(a, b) -> bool:
    """True when the pipelines share components and every shared component's weights are one storage."""
    shared = shared_components(a, b)
    return bool(shared) and all(shared.values())
