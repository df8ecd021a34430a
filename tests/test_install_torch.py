"""make install's torch decision (tools/install_torch.py), on recorded pip answers: no network needed."""

from __future__ import annotations

from tools.install_torch import CPU_INDEX, Source, candidate_sources, decide

TORCH_DEPS = [("filelock", "3.20.0"), ("sympy", "1.14.0"), ("networkx", "3.5")]
PYPI_LINUX = [("torch", "2.13.0"), *TORCH_DEPS, ("cuda-toolkit", "13.0.2"), ("nvidia-cudnn-cu13", "9.13.0.50"),
              ("nvidia-nccl-cu13", "2.28.3"), ("triton", "3.6.0")]  # the shape of PyPI's Linux torch 2.13.0
CPU_BUILD = [("torch", "2.13.0+cpu"), *TORCH_DEPS]


def sources(index="", cpu_index=None, configured=None):
    found = candidate_sources(index)
    for source in found:
        source.resolved = cpu_index if CPU_INDEX in source.pip_args else configured
        if index and index in source.pip_args and index != CPU_INDEX:
            source.resolved = CPU_BUILD
    return found


def test_gpu_machines_keep_requirements_torch():
    decision = decide(True, sources(cpu_index=CPU_BUILD, configured=PYPI_LINUX))
    assert decision.source is None and "CUDA build" in decision.message


def test_no_gpu_prefers_the_cpu_index():
    decision = decide(False, sources(cpu_index=CPU_BUILD, configured=PYPI_LINUX))
    assert decision.source.pip_args == ["--index-url", CPU_INDEX]
    assert "torch==2.13.0+cpu" in decision.message


def test_cpu_index_unreachable_falls_back_to_a_configured_cpu_wheel():
    # This machine: download.pytorch.org unreachable, pip.conf's find-links serves torch 2.13.0+cpu.
    decision = decide(False, sources(cpu_index=None, configured=CPU_BUILD))
    assert decision.source.pip_args == [] and "CPU torch" in decision.message


def test_only_pypi_cuda_reachable_says_what_it_will_fetch_before_installing():
    decision = decide(False, sources(cpu_index=None, configured=PYPI_LINUX))
    assert decision.source.pip_args == []
    assert decision.message.startswith("WARNING")
    expected = ("cuda-toolkit==13.0.2", "nvidia-cudnn-cu13==9.13.0.50", "nvidia-nccl-cu13==2.28.3", "triton==3.6.0")
    for package in expected:
        assert package in decision.message


def test_torch_index_is_tried_first():
    found = candidate_sources("https://example.invalid/cpu")
    assert found[0].pip_args == ["--index-url", "https://example.invalid/cpu"]
    assert [s.pip_args for s in found[1:]] == [["--index-url", CPU_INDEX], []]
    decision = decide(False, sources("https://example.invalid/cpu", cpu_index=CPU_BUILD, configured=PYPI_LINUX))
    assert decision.source.label.startswith("TORCH_INDEX=")


def test_nothing_answers_says_so():
    decision = decide(False, [Source("a", ["--index-url", "x"]), Source("b", [])])
    assert decision.source is None and "no torch source answered" in decision.message
