"""fastpath.py: the prepared denoiser call against eager float32, option resolution, and the
torch.compile / CUDA-graph fallbacks (emulated on the CPU; the real ones are `gpu` tests).

Oracle: the same module called eagerly in float32 under ``torch.no_grad()`` on the same input.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import cwdm.inference.fastpath as fastpath
from cwdm.errors import ShapeError
from cwdm.inference.fastpath import CPU_CHANNELS_LAST, GPU_CHANNELS_LAST, FastPathOptions, prepare_denoiser
from cwdm.method.denoiser import Denoiser
from cwdm.runtime import Runtime

from .conftest import TINY, randomised

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
CPU_FP32 = Runtime(CPU, "fp32")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _inputs(batch: int = 2, size: int = 8, seed: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, TINY.in_channels, size, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t


def _eager_fp32(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x, t)


# -- numerics on the CPU ----------------------------------------------------------------------------


def test_cpu_fast_path_equals_eager_fp32_bit_for_bit(tiny_denoiser: Denoiser) -> None:
    x, t = _inputs()
    expected = _eager_fp32(tiny_denoiser, x, t)
    options = FastPathOptions.resolve(CPU)
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, options)
    got = fast(x, t)
    assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == expected.shape
    assert float(expected.abs().max()) > 0.1  # a randomised model: the comparison means something
    if options.channels_last:  # pragma: no cover - the reference CPU measured it slower; see fastpath.py
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, expected)
    assert not any(p.requires_grad for p in tiny_denoiser.parameters())
    assert not tiny_denoiser.training


def test_channels_last_layout_is_the_same_network(tiny_denoiser: Denoiser) -> None:
    x, t = _inputs()
    expected = _eager_fp32(tiny_denoiser, x, t)
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions(channels_last=True))
    conv = tiny_denoiser.input_blocks[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    got = fast(x, t)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_autocast_covers_the_network_and_the_output_is_float32(tiny_denoiser: Denoiser) -> None:
    """bf16 autocast (possible on a CPU when the Runtime is built directly): convolutions run in bf16,
    the output handed to the sampler is float32, and it stays within bf16 rounding of fp32."""
    x, t = _inputs()
    expected = _eager_fp32(tiny_denoiser, x, t)
    seen: list[torch.dtype] = []
    conv = tiny_denoiser.input_blocks[0][0]
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    fast = prepare_denoiser(tiny_denoiser, Runtime(CPU, "bf16"), FastPathOptions.resolve(CPU))
    got = fast(x, t)
    assert seen == [torch.bfloat16]
    assert got.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    relative = float((got - expected).norm() / expected.norm())
    assert 0 < relative < 3e-2  # bf16 has 8 mantissa bits; exactly 0 would mean no autocast at all


def test_output_is_a_fresh_tensor_in_inference_mode(tiny_denoiser: Denoiser) -> None:
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions.resolve(CPU))
    x, t = _inputs()
    first = fast(x, t)
    assert first.is_inference()
    second = fast(x, t)
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, second)


def test_shape_errors_pass_through(tiny_denoiser: Denoiser) -> None:
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions.resolve(CPU))
    x, t = _inputs(size=7)
    with pytest.raises(ShapeError, match="multiples of 2"):
        fast(x, t)


# -- option resolution --------------------------------------------------------------------------------


def test_gpu_defaults_turn_on_autotuning_and_the_measured_layout_only() -> None:
    options = FastPathOptions.resolve(CUDA)
    assert (options.enabled, options.cudnn_benchmark) == (True, True)
    assert options.channels_last is GPU_CHANNELS_LAST
    assert (options.compile, options.cuda_graphs, options.notes) == (False, False, ())
    options = FastPathOptions.resolve(
        CUDA, compile=True, compile_mode="max-autotune-no-cudagraphs", cuda_graphs=True
    )
    assert options.compile and options.cuda_graphs and options.compile_mode == "max-autotune-no-cudagraphs"
    assert "cuda graphs" in options.describe() and "torch.compile" in options.describe()


def test_cpu_gets_only_what_measured_faster(caplog: pytest.LogCaptureFixture) -> None:
    options = FastPathOptions.resolve(CPU)
    assert options.channels_last is CPU_CHANNELS_LAST and not options.cudnn_benchmark
    with caplog.at_level(logging.WARNING, logger="cwdm.inference.fastpath"):
        options = FastPathOptions.resolve(CPU, cuda_graphs=True, compile=True)
    assert not options.cuda_graphs and options.compile
    assert "cuda_graphs needs a CUDA GPU" in caplog.text


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_modes_with_their_own_graphs_skip_ours(mode: str) -> None:
    options = FastPathOptions.resolve(CUDA, compile=True, compile_mode=mode, cuda_graphs=True)  # type: ignore[arg-type]
    assert options.compile and not options.cuda_graphs
    assert any("captures CUDA graphs itself" in note for note in options.notes)


def test_fast_path_off_is_the_eager_reference() -> None:
    options = FastPathOptions.resolve(CUDA, fast_path=False, compile=True, cuda_graphs=True)
    assert not any([options.enabled, options.channels_last, options.cudnn_benchmark])
    assert not (options.compile or options.cuda_graphs)
    assert options.describe() == "eager (fast path off)"
    assert "ignored" in options.notes[0]


# -- torch.compile fallback ------------------------------------------------------------------------------


class _Broken:
    """Stands in for a compiled module whose compilation fails with ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        raise self.exc


def _compiled_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> _Broken:
    broken = _Broken(exc)
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: broken)
    return broken


def test_failed_compilation_falls_back_to_eager_for_good(
    tiny_denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    broken = _compiled_with(monkeypatch, RuntimeError("no C compiler"))
    x, t = _inputs()
    expected = _eager_fp32(tiny_denoiser, x, t)
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions(compile=True))
    with caplog.at_level(logging.WARNING, logger="cwdm.inference.fastpath"):
        assert torch.equal(fast(x, t), expected)
        assert torch.equal(fast(x, t), expected)
    assert broken.calls == 1  # not retried
    assert "torch.compile failed (RuntimeError: no C compiler)" in caplog.text


@pytest.mark.parametrize("exc", [ShapeError("bad input"), torch.OutOfMemoryError("out of memory")])
def test_input_and_memory_errors_are_not_compile_failures(
    tiny_denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    _compiled_with(monkeypatch, exc)
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions(compile=True))
    with pytest.raises(type(exc)):
        fast(*_inputs())


def test_compile_is_given_the_mode_and_fixed_shapes(
    tiny_denoiser: Denoiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs) or module)
    fast = prepare_denoiser(
        tiny_denoiser, CPU_FP32, FastPathOptions(compile=True, compile_mode="max-autotune")
    )
    x, t = _inputs()
    assert torch.equal(fast(x, t), _eager_fp32(tiny_denoiser, x, t))
    assert calls == [{"mode": "max-autotune", "dynamic": False}]


@pytest.mark.slow
def test_real_torch_compile_on_cpu_matches_eager(tiny_denoiser: Denoiser) -> None:
    x, t = _inputs()
    expected = _eager_fp32(tiny_denoiser, x, t)
    fast = prepare_denoiser(tiny_denoiser, CPU_FP32, FastPathOptions(compile=True))
    torch.testing.assert_close(fast(x, t), expected, rtol=1e-4, atol=1e-4)
    assert fast.compiled  # it did compile (no fallback)


# -- CUDA graphs: the caching, checking and fallback logic, emulated on the CPU --------------------------


class _EmulatedStep:
    """A CPU stand-in for a captured graph with the same static-buffer semantics: replay recomputes
    from the static inputs into one static output buffer."""

    captures = 0
    corrupt = False
    fail: BaseException | None = None

    def __init__(self, network, static_x: Tensor, static_t: Tensor) -> None:  # type: ignore[no-untyped-def]
        self.network, self.static_x, self.static_t = network, static_x, static_t
        self.static_out = network(static_x, static_t)

    @classmethod
    def capture(cls, network, static_x, static_t, pool):  # type: ignore[no-untyped-def]
        if cls.fail is not None:
            raise cls.fail
        cls.captures += 1
        return cls(network, static_x, static_t)

    def replay(self, x: Tensor, t: Tensor) -> Tensor:
        self.static_x.copy_(x)
        self.static_t.copy_(t)
        self.static_out.copy_(self.network(self.static_x, self.static_t))
        if self.corrupt:
            self.static_out.add_(1.0)
        return self.static_out.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


class _Stream:
    def wait_stream(self, other: object) -> None:
        del other


@pytest.fixture
def emulated_graphs(monkeypatch: pytest.MonkeyPatch) -> type[_EmulatedStep]:
    """Replace the CUDA calls of the capture path by CPU no-ops and the graph by :class:`_EmulatedStep`."""

    class Step(_EmulatedStep):
        pass

    monkeypatch.setattr(fastpath, "_GraphedStep", Step)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    return Step


def _graphed(model: nn.Module) -> fastpath.FastDenoiser:
    """A FastDenoiser with CUDA graphs on, running on the CPU (the runtime says cuda, tensors are CPU)."""
    fast = prepare_denoiser(model, CPU_FP32, FastPathOptions(cuda_graphs=True))
    fast._use_graphs = True
    return fast


def test_graph_replays_match_eager_and_never_alias_the_static_buffer(
    tiny_denoiser: Denoiser, emulated_graphs: type[_EmulatedStep]
) -> None:
    fast = _graphed(tiny_denoiser)
    x1, t1 = _inputs(seed=1)
    x2, t2 = _inputs(seed=2)
    first = fast(x1, t1)
    second = fast(x2, t2)
    assert emulated_graphs.captures == 1  # one graph per shape, reused
    assert torch.equal(first, _eager_fp32(tiny_denoiser, x1, t1))  # the second call overwrote the buffer...
    assert torch.equal(second, _eager_fp32(tiny_denoiser, x2, t2))  # ...but not the returned tensors
    fast(*_inputs(batch=1))
    assert emulated_graphs.captures == 2  # a new shape, a new graph


def test_graphs_are_limited_in_number(tiny_denoiser: Denoiser, emulated_graphs: type[_EmulatedStep]) -> None:
    fast = _graphed(tiny_denoiser)
    for batch in range(1, fastpath.MAX_GRAPHS + 3):
        x, t = _inputs(batch=batch)
        assert torch.equal(fast(x, t), _eager_fp32(tiny_denoiser, x, t))
    assert emulated_graphs.captures == fastpath.MAX_GRAPHS


@pytest.mark.parametrize("failure", ["capture", "mismatch"])
def test_failed_or_wrong_capture_falls_back_to_eager(
    tiny_denoiser: Denoiser,
    emulated_graphs: type[_EmulatedStep],
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    if failure == "capture":
        emulated_graphs.fail = RuntimeError("operation not permitted when stream is capturing")
    else:
        emulated_graphs.corrupt = True
    fast = _graphed(tiny_denoiser)
    x, t = _inputs()
    with caplog.at_level(logging.WARNING, logger="cwdm.inference.fastpath"):
        for _ in range(3):
            assert torch.equal(fast(x, t), _eager_fp32(tiny_denoiser, x, t))
    assert caplog.text.count("CUDA graph capture for input (2, 32, 8, 8, 8) failed") == 1  # not retried
    expected = "not permitted" if failure == "capture" else "differs from the eager output"
    assert expected in caplog.text


def test_warm_up_errors_are_not_capture_failures(
    tiny_denoiser: Denoiser, emulated_graphs: type[_EmulatedStep]
) -> None:
    fast = _graphed(tiny_denoiser)
    with pytest.raises(ShapeError):
        fast(*_inputs(size=7))
    assert emulated_graphs.captures == 0


# -- real GPU -----------------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_gpu_fast_path_is_close_to_fp32(graphs: bool) -> None:  # pragma: no cover - needs a GPU
    model = randomised(Denoiser(TINY)).eval().to(CUDA)
    x, t = (v.to(CUDA) for v in _inputs(size=16))
    expected = _eager_fp32(model, x, t)
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    fast = prepare_denoiser(
        model, Runtime(CUDA, precision), FastPathOptions.resolve(CUDA, cuda_graphs=graphs)
    )
    for _ in range(3):
        got = fast(x, t)
    assert got.dtype == torch.float32
    assert float((got - expected).norm() / expected.norm()) < 3e-2
    if graphs:
        assert fast.captured_graphs == 1
