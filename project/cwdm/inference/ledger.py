"""The draws of a group of cases, sampled in batches that fit the device: the out-of-memory loop.

A group is the prepared cases of one target whose network grids share one shape; each case needs
``samples`` draws. :meth:`DrawLedger.outcomes` takes draws off the ledger as large batches as the device
allows (the synthesizer's :attr:`~cwdm.inference.synthesizer.Synthesizer.draw_limit`, none at first),
samples them, and hands out each case as soon as all its draws are done. A batch that runs out of device
memory goes back on the ledger and the limit is halved, down to one draw at a time; a draw that does not
fit even alone fails its case with :class:`cwdm.errors.DeviceMemoryError`, never silently. Each draw has
its own generator, so a retried batch gives the outputs of a run at the smaller size. Any other error of
a batch is handed out as a :class:`BatchFailed` and the ledger drops the rest of those cases' draws.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..cases.discovery import Case
from ..errors import DeviceMemoryError
from ..sequences import MRISequence
from .casework import PreparedCase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draw:
    """Draw ``index`` of a prepared case."""

    item: PreparedCase
    index: int


@dataclass(frozen=True)
class Completed:
    """Every draw of a case is done: ``volumes`` ``(samples, *network_shape)``, in draw order, and the
    case's share of its batches' sampling time."""

    item: PreparedCase
    volumes: np.ndarray
    network_s: float


@dataclass(frozen=True)
class BatchFailed:
    """A batch failed: ``error`` concerns ``cases`` (their remaining draws are dropped)."""

    cases: tuple[Case, ...]
    error: Exception


class DrawSampler(Protocol):
    """What the ledger needs of a synthesizer."""

    draw_limit: int | None

    def sample_draws(
        self,
        target: MRISequence,
        draws: Sequence[Draw],
        on_step: Callable[[tuple[str, ...], int, int], None] | None = None,
    ) -> np.ndarray:
        """``(len(draws), *network_shape)`` float32 volumes; ``on_step(case_ids, done, total)`` after each
        sampling step."""
        ...

    def release_cached_memory(self) -> None: ...

    @property
    def device_label(self) -> str: ...


class DrawLedger:
    """The pending and finished draws of one group (see the module).

    Args:
        target: The group's target.
        items: Prepared cases of that target, on one network shape.
        samples: Draws per case.
    """

    def __init__(self, target: MRISequence, items: Sequence[PreparedCase], samples: int) -> None:
        self.target = target
        self.samples = samples
        self._pending: deque[Draw] = deque(Draw(item, index) for item in items for index in range(samples))
        self._volumes: dict[str, list[np.ndarray | None]] = {
            item.case.case_id: [None] * samples for item in items
        }
        self._network_s: dict[str, float] = {item.case.case_id: 0.0 for item in items}

    def __len__(self) -> int:
        return len(self._pending)

    def outcomes(
        self, sampler: DrawSampler, on_step: Callable[[tuple[str, ...], int, int], None] | None = None
    ) -> Iterator[Completed | BatchFailed]:
        """Sample every pending draw (see the module); yield each case as it completes, and each failed
        batch. ``on_step`` is handed to the sampler for each batch."""
        while self._pending:
            draws = [self._pending.popleft() for _ in range(min(sampler.draw_limit or len(self), len(self)))]
            cases = tuple({draw.item.case.case_id: draw.item.case for draw in draws}.values())
            out_of_memory = ""
            start = time.perf_counter()
            try:
                volumes = sampler.sample_draws(self.target, draws, on_step)
            except torch.OutOfMemoryError as exc:
                if len(draws) > 1:
                    out_of_memory = _first_line(exc)
                else:
                    error = DeviceMemoryError(
                        cases[0].case_id,
                        f"out of {sampler.device_label} memory sampling {self.target} even alone (batch size "
                        f"1): {_first_line(exc)}; use a larger GPU, or precision bf16/fp16",
                        cases[0].folder,
                    )
                    yield self._failed(cases, error)
                    continue
            except Exception as exc:  # handed to the run's isolation boundary, which records it
                yield self._failed(cases, exc)
                continue
            if out_of_memory:  # retried here, outside the handler, whose traceback held the batch's tensors
                self._pending.extendleft(reversed(draws))
                sampler.draw_limit = len(draws) // 2
                log.warning(
                    "out of %s memory sampling %d %s together (%s; %s); retrying %d at a time",
                    sampler.device_label,
                    len(draws),
                    "cases" if self.samples == 1 else "draws",
                    ", ".join(case.case_id for case in cases),
                    out_of_memory,
                    sampler.draw_limit,
                )
                sampler.release_cached_memory()
                continue
            share = (time.perf_counter() - start) / len(draws)
            yield from self._add(draws, volumes, share)

    def _add(self, draws: Sequence[Draw], volumes: np.ndarray, share_s: float) -> Iterator[Completed]:
        for draw, volume in zip(draws, volumes, strict=True):
            case_id = draw.item.case.case_id
            collected = self._volumes[case_id]
            collected[draw.index] = volume
            self._network_s[case_id] += share_s
            if all(v is not None for v in collected):
                yield Completed(draw.item, np.stack(collected), self._network_s[case_id])  # type: ignore[arg-type]

    def _failed(self, cases: tuple[Case, ...], error: Exception) -> BatchFailed:
        ids = {case.case_id for case in cases}
        self._pending = deque(draw for draw in self._pending if draw.item.case.case_id not in ids)
        return BatchFailed(cases, error)


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
