"""The fast inference path: one prepared denoiser callable ``(x, t) -> x0`` for the sampler.

What it does (docs/USAGE.md, "Speed"; measurements in docs/PERFORMANCE.md):

- Always: ``torch.inference_mode()`` around the call, parameters frozen (``requires_grad`` off), the
  output returned as a contiguous float32 tensor, so the sampler state stays float32 whatever the network
  computes in (docs/ARCHITECTURE.md, "Conventions").
- Autocast in the runtime's precision (bf16 or fp16 on a GPU; bf16 on a CPU with native bf16 when asked
  for, :func:`cwdm.runtime.resolve_precision`) around the network call only; GroupNorm still computes
  in float32 inside the network, as published (``GroupNorm32``).
- On a CUDA GPU, when the fast path is on: cuDNN autotuning (``torch.backends.cudnn.benchmark``, a
  process-wide setting that :func:`cwdm.runtime.configure_process` makes), and the channels-last 3D
  layout only if :data:`GPU_CHANNELS_LAST` says so.
- Optional, on request: ``torch.compile`` (mode configurable) and CUDA-graph capture of the denoiser step
  with static input buffers, one graph per input shape. Either falls back to the eager network, with a
  logged warning, when compilation or capture fails, and a captured graph is checked against the eager
  output of the same input before it is used.
- On a CPU only what was measured faster than plain eager float32 on the reference CPU is enabled
  (:data:`CPU_CHANNELS_LAST`); with ``precision: fp32`` (what ``auto`` gives there) the CPU fast path is
  the plain float32 path, so it is never the slower one.

Process-wide settings (cuDNN autotuning, the compiler caches) are not made here but by the entry points
through :func:`cwdm.runtime.configure_process`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..choices import CompileMode
from ..errors import CwdmError
from ..runtime import Runtime, autocast

log = logging.getLogger(__name__)


#: torch.compile modes that capture CUDA graphs themselves (our own capture is then skipped).
_COMPILE_MODES_WITH_GRAPHS = frozenset({"reduce-overhead", "max-autotune"})

#: Channels-last 3D on a CPU: not measured consistently faster than the contiguous layout on the
#: reference CPU (docs/PERFORMANCE.md: 1.05 and 0.96 of the time in two runs, within the noise), so
#: the CPU fast path keeps the contiguous layout.
CPU_CHANNELS_LAST = False

#: Channels-last 3D on a GPU: measured slower on an H100 with cuDNN 9.19 (published network, full
#: resolution, bf16: 134.5 ms a step against 87.5 ms contiguous; docs/PERFORMANCE.md), so the GPU fast
#: path keeps the contiguous layout too. ``FastPathOptions(channels_last=True)`` still offers it.
GPU_CHANNELS_LAST = False

#: Most CUDA graphs kept per denoiser (one per input shape); further shapes run eagerly.
MAX_GRAPHS = 4
#: A captured graph is used only if its output on the capture input matches the eager output to this
#: relative tolerance (largest absolute difference over the largest absolute eager value).
GRAPH_CHECK_RTOL = 1e-2


@dataclass(frozen=True)
class FastPathOptions:
    """The resolved fast-path settings of one device; build with :meth:`resolve`.

    Attributes:
        enabled: The fast path is on (``fast_path: true``); when off, the network runs eagerly in the
            contiguous layout (autocast still follows ``precision``), the reference behaviour.
        channels_last: Weights and network input in the channels-last 3D layout.
        cudnn_benchmark: Turn on cuDNN autotuning (process-wide).
        compile: Wrap the network in ``torch.compile`` with :attr:`compile_mode`.
        compile_mode: The ``torch.compile`` mode.
        cuda_graphs: Capture the denoiser step as a CUDA graph per input shape.
        notes: Why a requested setting was not applied (also logged by :meth:`resolve`).
    """

    enabled: bool = True
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"
    cuda_graphs: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def resolve(
        cls,
        device: torch.device,
        *,
        fast_path: bool = True,
        compile: bool = False,
        compile_mode: CompileMode = "default",
        cuda_graphs: bool = False,
    ) -> FastPathOptions:
        """The settings for ``device`` from the parameters.yaml keys of the same names.

        Rules: with ``fast_path`` false everything is off (``compile`` and ``cuda_graphs`` are then
        ignored, with a note). On a CUDA device the fast path adds cuDNN autotuning and
        :data:`GPU_CHANNELS_LAST`, plus ``compile`` and ``cuda_graphs`` as requested (our capture is
        skipped when the compile mode captures graphs itself). On a CPU it adds only
        :data:`CPU_CHANNELS_LAST`, plus ``compile`` if requested; CUDA graphs need a GPU.
        """
        notes: list[str] = []
        if not fast_path:
            if compile or cuda_graphs:
                notes.append("fast_path is false: compile and cuda_graphs are ignored")
            options = cls(enabled=False, compile_mode=compile_mode, notes=tuple(notes))
        elif device.type == "cuda":
            graphs = cuda_graphs
            if graphs and compile and compile_mode in _COMPILE_MODES_WITH_GRAPHS:
                notes.append(
                    f"compile_mode {compile_mode} captures CUDA graphs itself: cuda_graphs capture skipped"
                )
                graphs = False
            options = cls(True, GPU_CHANNELS_LAST, True, compile, compile_mode, graphs, tuple(notes))
        else:
            if cuda_graphs:
                notes.append(f"cuda_graphs needs a CUDA GPU; not used on {device}")
            options = cls(True, CPU_CHANNELS_LAST, False, compile, compile_mode, False, tuple(notes))
        for note in notes:
            log.warning("%s", note)
        return options

    def describe(self) -> str:
        """For logs, e.g. ``fast path (channels-last, cudnn autotune, cuda graphs)`` or ``eager``."""
        if not self.enabled:
            return "eager (fast path off)"
        parts = [
            name
            for name, on in (
                ("channels-last", self.channels_last),
                ("cudnn autotune", self.cudnn_benchmark),
                (f"torch.compile {self.compile_mode}", self.compile),
                ("cuda graphs", self.cuda_graphs),
            )
            if on
        ]
        return "fast path" + (f" ({', '.join(parts)})" if parts else " (inference mode only)")


Network = Callable[[Tensor, Tensor], Tensor]


class FastDenoiser:
    """The prepared denoiser call: ``(x, t) -> x0`` as a contiguous float32 tensor.

    Build with :func:`prepare_denoiser`. Not thread-safe (CUDA graphs own static buffers); use one per
    worker.

    Attributes:
        module: The network (converted in place: layout, frozen parameters).
        runtime: Device and precision.
        options: The fast-path settings.
    """

    def __init__(self, module: nn.Module, runtime: Runtime, options: FastPathOptions) -> None:
        self.module = module
        self.runtime = runtime
        self.options = options
        self._compiled: Network | None = None
        if options.compile:
            self._compiled = torch.compile(module, mode=options.compile_mode, dynamic=False)
        self._graphs: dict[tuple[object, ...], _GraphedStep | None] = {}
        self._graph_pool: object | None = None
        self._use_graphs = options.cuda_graphs and runtime.device.type == "cuda"

    @property
    def compiled(self) -> bool:
        """Whether calls go through ``torch.compile`` (false after a fallback to eager)."""
        return self._compiled is not None

    @property
    def captured_graphs(self) -> int:
        """How many input shapes run as a captured CUDA graph."""
        return sum(step is not None for step in self._graphs.values())

    # -- the call ------------------------------------------------------------------------------
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict x0.

        Args:
            x: ``(B, C_in, D, H, W)`` network input (noisy coefficients then condition), float32.
            t: ``(B,)`` original timestep values.

        Returns:
            ``(B, C_out, D, H, W)`` float32, contiguous; a fresh tensor (never a graph's buffer).
        """
        with torch.inference_mode():
            if self._use_graphs:
                return self._graphed(x, t)
            return _as_sampler_state(self._run(x, t))

    def _autocast(self) -> AbstractContextManager[object]:
        # No weight-cast cache: parameters do not require grad here, and a cache would be captured
        # into CUDA graphs (the PyTorch CUDA-graph notes ask for cache_enabled=False).
        return autocast(self.runtime.device, self.runtime.precision, cache_enabled=False)

    def _run(self, x: Tensor, t: Tensor) -> Tensor:
        """The network (compiled when it is, falling back to eager for good if that fails), in the
        layout and under the autocast of the fast path."""
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        network = self._compiled or self.module
        try:
            with self._autocast():
                return network(x, t)
        except (CwdmError, torch.OutOfMemoryError):
            raise  # bad input or out of memory: the same in eager mode; the caller decides
        except Exception as exc:
            if network is self.module:
                raise
            # Compilation failed: the eager network is the reference anyway (and raises if it fails too).
            with self._autocast():
                out = self.module(x, t)
            log.warning("torch.compile failed (%s: %s); running the network eagerly", type(exc).__name__, exc)
            self._compiled = None
            return out

    # -- CUDA graphs -----------------------------------------------------------------------------
    def _graphed(self, x: Tensor, t: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, x.device)
        if key not in self._graphs:
            if len(self._graphs) >= MAX_GRAPHS:
                return _as_sampler_state(self._run(x, t))
            step, out = self._capture(x, t)
            self._graphs[key] = step
            return out
        step = self._graphs[key]
        if step is None:
            return _as_sampler_state(self._run(x, t))
        return step.replay(x, t)

    def _capture(self, x: Tensor, t: Tensor) -> tuple[_GraphedStep | None, Tensor]:
        """Warm up, capture and check a graph for ``x``'s shape; returns it (or None) and the output.

        Errors of the eager warm-up (bad input, out of memory) propagate: they are not capture errors.
        """
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        static_x, static_t = x.clone(), t.clone()
        with torch.cuda.stream(stream):
            # Two warm-up calls: cuDNN autotuning and torch.compile happen here, outside the capture.
            for _ in range(2):
                expected = _as_sampler_state(self._run(static_x, static_t))
        torch.cuda.current_stream(x.device).wait_stream(stream)
        try:
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            step = _GraphedStep.capture(lambda a, b: self._run(a, b), static_x, static_t, self._graph_pool)
            got = step.replay(x, t)
            scale = float(expected.abs().max())
            error = float((got - expected).abs().max()) / max(scale, torch.finfo(torch.float32).tiny)
            if not error <= GRAPH_CHECK_RTOL:
                raise RuntimeError(f"graph replay differs from the eager output (relative error {error:.3g})")
        except Exception as exc:  # capture is an optimisation: any failure means eager, never a failed case
            log.warning(
                "CUDA graph capture for input %s failed (%s: %s); running this shape without a graph",
                tuple(x.shape),
                type(exc).__name__,
                exc,
            )
            torch.cuda.synchronize(x.device)
            return None, expected
        log.info("captured a CUDA graph of the denoiser step for input %s", tuple(x.shape))
        return step, got


@dataclass
class _GraphedStep:
    """One captured denoiser step: copy inputs into static buffers, replay, copy the output out."""

    graph: torch.cuda.CUDAGraph
    static_x: Tensor
    static_t: Tensor
    static_out: Tensor

    @classmethod
    def capture(cls, network: Network, static_x: Tensor, static_t: Tensor, pool: object) -> _GraphedStep:
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (case loading and writing) may use CUDA while this one captures.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_out = network(static_x, static_t)
        return cls(graph, static_x, static_t, static_out)

    def replay(self, x: Tensor, t: Tensor) -> Tensor:
        self.static_x.copy_(x)
        self.static_t.copy_(t)
        self.graph.replay()
        # A copy: the next replay overwrites static_out.
        return self.static_out.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


def _as_sampler_state(out: Tensor) -> Tensor:
    """float32, contiguous (a no-op for a float32 contiguous network output)."""
    return out.to(torch.float32, memory_format=torch.contiguous_format)


def prepare_denoiser(module: nn.Module, runtime: Runtime, options: FastPathOptions) -> FastDenoiser:
    """Prepare an eval-mode denoiser for inference and return the callable the sampler uses.

    The module is changed in place: it is put in eval mode, its parameters stop requiring gradients
    and, with ``options.channels_last``, its weights move to the channels-last 3D layout (the same
    values). ``options.cudnn_benchmark`` is a process-wide setting: :func:`cwdm.runtime.configure_process`.

    Args:
        module: ``(x, t) -> x0``, e.g. a :class:`cwdm.Denoiser` on ``runtime.device``.
        runtime: Device and precision (autocast dtype).
        options: From :meth:`FastPathOptions.resolve`.

    Returns:
        A :class:`FastDenoiser`; pass it to :func:`cwdm.sample` as the denoiser.
    """
    module.eval().requires_grad_(False)
    if options.channels_last:
        module.to(memory_format=torch.channels_last_3d)
    return FastDenoiser(module, runtime, options)
