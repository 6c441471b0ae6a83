"""The resumable-training machinery both trainings share (the denoisers' ``cwdm train`` and the reference
segmenter's ``cwdm segmenter train``): checkpoints written atomically and resumed bit for bit, the check
that a checkpoint was written with this run's settings, the CSV log, the time limit, the stop on a signal,
and the outcome of a run with its exit status.

A training subclasses :class:`ResumableRun` and supplies its step (:meth:`~ResumableRun.train_step`), the
state of its model, optimiser and generators (:meth:`~ResumableRun.model_state`,
:meth:`~ResumableRun.load_model_state`) and its export (:meth:`~ResumableRun.export_weights`).
"""

from __future__ import annotations

import csv
import io
import math
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from .atomic import replacing, write_atomic
from .errors import CheckpointError, CwdmError


class RunConfig(Protocol):
    """What the machinery needs of a training's settings."""

    iterations: int
    save_every: int
    log_every: int

    def lr_at(self, step: int) -> float: ...

    def to_record(self) -> dict[str, Any]: ...


@dataclass
class StepReport:
    """Progress of the loop, passed to the ``on_log`` callback."""

    step: int
    loss: float
    elapsed_s: float
    steps_per_s: float


class ResumableRun(ABC):
    """A training loop that checkpoints and resumes (see the module).

    Args:
        config: The run's settings.
        out_dir: Receives ``checkpoints/step_<N>.pt`` and ``train_log.csv``.
        rank: This process's rank (only rank 0 writes files).
    """

    #: The ``format`` tag of the checkpoints; a file with another one is not resumed.
    FORMAT: ClassVar[str]
    #: How many of the newest checkpoints are kept (``None``: all).
    KEEP: ClassVar[int | None] = None
    #: Settings that may change between a run and its resumption.
    FREE_ON_RESUME: ClassVar[tuple[str, ...]] = ("iterations", "save_every", "log_every")

    def __init__(self, config: RunConfig, out_dir: Path, rank: int = 0) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.step = 0

    # -- what a training supplies ---------------------------------------------------------------
    @abstractmethod
    def train_step(self) -> float:
        """One optimiser step (the learning rate of step ``self.step`` is ``config.lr_at(self.step)``);
        advances :attr:`step` and returns the batch loss."""

    @abstractmethod
    def model_state(self) -> dict[str, Any]:
        """Everything but the step and the settings needed to resume (weights, optimiser, generators)."""

    @abstractmethod
    def load_model_state(self, state: dict[str, Any], path: Path) -> None:
        """Restore what :meth:`model_state` saved (``path`` names the checkpoint in errors)."""

    @abstractmethod
    def export_weights(self) -> Path:
        """Write the inference weights; returns their file."""

    def stop_agreed(self, requested: bool) -> bool:
        """Whether to stop now; several processes agree here (the default is one process)."""
        return requested

    def close(self) -> None:  # noqa: B027 (optional: only trainings that hold something override it)
        """Release what the loop held (background readers) when it ends, also on an error."""

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def state(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "step": self.step,
            "config": self.config.to_record(),
        } | self.model_state()

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<N>.pt`` atomically (keeping the newest :attr:`KEEP`) and export the
        weights; only rank 0 writes."""
        path = self.checkpoint_dir / f"step_{self.step:08d}.pt"
        if self.rank == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp:
                torch.save(self.state(), tmp)
            if self.KEEP is not None:
                for old in sorted(self.checkpoint_dir.glob("step_*.pt"))[: -self.KEEP]:
                    old.unlink()
            self.export_weights()
        return path

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoint_dir.glob("step_*.pt"))
        return found[-1] if found else None

    def load_checkpoint(self, path: Path) -> None:
        """Resume from a checkpoint of this run's settings (weights-only loading: no code runs).

        Raises:
            CheckpointError: unreadable, not this training's, or written with other settings.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for unreadable files
            raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != self.FORMAT:
            raise CheckpointError(f"{path}: not a {self.FORMAT} checkpoint")
        changed = self.changed_settings(state.get("config") or {})
        if changed:
            raise CheckpointError(
                f"{path}: written with different settings ({', '.join(changed)}); cannot resume"
            )
        self.load_model_state(state, Path(path))
        self.step = int(state["step"])

    def changed_settings(self, theirs: dict[str, Any]) -> list[str]:
        """The settings that differ from a checkpoint's (those of :attr:`FREE_ON_RESUME` may)."""
        ours = self.config.to_record()
        return [key for key in ours if key not in self.FREE_ON_RESUME and ours[key] != theirs.get(key)]

    # -- the loop -----------------------------------------------------------------------------------
    def run(
        self,
        on_log: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        max_seconds: float | None = None,
    ) -> Path:
        """Train until ``config.iterations``, a stop request or ``max_seconds``; checkpoint every
        ``save_every`` steps and when leaving early (unless it just did). A rerun resumes from there.

        Returns:
            The exported weights.

        Raises:
            CwdmError: the loss became NaN or infinite.
        """
        cfg = self.config
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        start, start_step, losses = time.perf_counter(), self.step, []
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            with _CsvLog(self.out_dir / "train_log.csv", self.rank == 0, self.step) as log:
                while self.step < cfg.iterations:
                    loss = self.train_step()
                    if not math.isfinite(loss):
                        raise CwdmError(f"loss became {loss} at step {self.step}; lower the learning rate")
                    losses.append(loss)
                    if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                        elapsed = time.perf_counter() - start
                        rate = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
                        report = StepReport(self.step, float(np.mean(losses)), elapsed, rate)
                        log.write(report, cfg.lr_at(self.step - 1))
                        losses.clear()
                        if on_log is not None:
                            on_log(report)
                    saved = self.step % cfg.save_every == 0 or self.step == cfg.iterations
                    if saved:
                        self.save_checkpoint()
                    requested = (should_stop is not None and should_stop()) or (
                        deadline is not None and time.monotonic() > deadline
                    )
                    if self.stop_agreed(requested):
                        if not saved:
                            self.save_checkpoint()
                        break
        finally:
            self.close()
        return self.weights_file

    @property
    @abstractmethod
    def weights_file(self) -> Path:
        """The file :meth:`export_weights` writes."""

    def outcome(self, name: str) -> RunOutcome:
        """Where this run stands, for a :class:`TrainingOutcome`."""
        return RunOutcome(name, self.step, self.config.iterations, self.weights_file)


class _CsvLog:
    """Append-only CSV of :class:`StepReport` rows (rank 0 only). On resume, rows logged after the
    checkpoint's step (the run went on past its last checkpoint before it stopped) are dropped: those
    steps are trained again."""

    HEADER = ("step", "loss", "lr", "elapsed_s", "steps_per_s")

    def __init__(self, path: Path, enabled: bool, resume_step: int = 0) -> None:
        self.path, self.enabled, self.resume_step = path, enabled, resume_step
        self._handle: Any = None

    def __enter__(self) -> _CsvLog:
        if self.enabled:
            new = not self.path.exists()
            if not new:
                self._drop_rows_after_resume_step()
            self._handle = self.path.open("a", newline="")
            self._writer = csv.writer(self._handle)
            if new:
                self._writer.writerow(self.HEADER)
        return self

    def _drop_rows_after_resume_step(self) -> None:
        rows = list(csv.reader(self.path.open(newline="")))
        kept = [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= self.resume_step]
        if len(kept) == len(rows) - 1:
            return
        buffer = io.StringIO()
        csv.writer(buffer).writerows([rows[0], *kept])
        write_atomic(self.path, buffer.getvalue())

    def write(self, report: StepReport, lr: float) -> None:
        if self._handle is not None:
            cells = [report.step, f"{report.loss:.6g}", f"{lr:.3g}", f"{report.elapsed_s:.1f}"]
            self._writer.writerow([*cells, f"{report.steps_per_s:.4g}"])
            self._handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()


@dataclass(frozen=True)
class RunOutcome:
    """Where one run (a target's denoiser, the segmenter) stopped."""

    name: str
    step: int
    iterations: int
    weights: Path

    @property
    def done(self) -> bool:
        return self.step >= self.iterations


@dataclass(frozen=True)
class TrainingOutcome:
    """The outcome of a training command: its runs, why it stopped, and its exit status.

    Attributes:
        runs: The runs that started, in order.
        planned: How many runs were asked for.
        stop_signal: The signal that asked the training to stop, if one did.
        max_seconds: The time limit of each run, if any.
    """

    runs: tuple[RunOutcome, ...]
    planned: int
    stop_signal: int | None = None
    max_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return len(self.runs) == self.planned and all(run.done for run in self.runs)

    @property
    def exit_code(self) -> int:
        """0 when every run finished or stopped at its time limit (rerun to go on); 128 + the signal
        number when a signal stopped it (SIGTERM's when another process's signal stopped this one)."""
        if self.finished or (self.stop_signal is None and self.max_seconds is not None):
            return 0
        return 128 + (self.stop_signal or signal.SIGTERM)

    def lines(self) -> list[str]:
        """A line per run: ``t2f: step 200 of 200 (done); weights: ...``."""
        return [
            f"{run.name}: step {run.step} of {run.iterations} ({'done' if run.done else 'stopped'}); "
            f"weights: {run.weights}"
            for run in self.runs
        ]

    def notice(self) -> str | None:
        """Why the training ended early and what to do, or ``None`` when it finished."""
        if self.finished:
            return None
        if self.exit_code == 0:
            return f"time limit of {self.max_seconds:g} s a run reached; checkpoints saved: rerun to go on"
        last = self.runs[-1] if self.runs else None
        where = f" after step {last.step} of {last.iterations}" if last else ""
        name = signal.Signals(self.exit_code - 128).name
        return (
            f"stopped by {name}{where}; checkpoint saved"
            + (f", weights exported to {last.weights}" if last else "")
            + ": rerun the same command to resume"
        )

    @classmethod
    def of(
        cls, runs: Sequence[RunOutcome], planned: int, stop_signal: int | None, max_seconds: float | None
    ) -> TrainingOutcome:
        return cls(tuple(runs), planned, stop_signal, max_seconds)
