"""Splitting one folder of cases between N independent processes (Slurm array tasks, Kubernetes
indexed Jobs, or any N commands started by hand).

The rule: case ``c`` belongs to part ``int(sha256(c)[:16], 16) % N`` (the first 64 bits of the SHA-256
of the case folder's name, as an unsigned integer, modulo N). A case's part depends on its own name and
on N only, so adding or removing other cases never moves it to another part, every process computes the
same split without talking to the others, and the parts are disjoint and cover the folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError

#: The rule, as the run report states it.
SPLIT_RULE = "int(sha256(case_id)[:16], 16) % num_parts"

T = TypeVar("T")


def part_of(case_id: str, num_parts: int) -> int:
    """The part (0 to ``num_parts`` - 1) that owns ``case_id``: see the module's rule."""
    digest = hashlib.sha256(case_id.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % num_parts


@dataclass(frozen=True)
class WorkPart:
    """One part of a split run.

    Attributes:
        index: This process's part, 0-based.
        count: How many parts the folder is split into.
        source: Where the index came from (``--part-id``, ``SLURM_ARRAY_TASK_ID``, ...), for the report.
    """

    index: int
    count: int
    source: str = "--part-id"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"the number of parts must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"part id {self.index} (from {self.source}) is outside 0..{self.count - 1} for "
                f"{self.count} parts; part ids are 0-based"
            )

    def owns(self, case_id: str) -> bool:
        return part_of(case_id, self.count) == self.index

    def select(self, cases: Sequence[T], key: Any = lambda case: case.case_id) -> list[T]:
        """The cases of this part, in their given order."""
        return [case for case in cases if self.owns(key(case))]

    @property
    def label(self) -> str:
        """``part 2 of 8`` (1-based, for people); file names use :attr:`suffix`."""
        return f"part {self.index + 1} of {self.count}"

    @property
    def suffix(self) -> str:
        """``part002of008``: the default report's name of this part (0-based index, zero-padded)."""
        width = len(str(self.count - 1))
        return f"part{self.index:0{width}d}of{self.count}"

    def to_record(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "source": self.source, "rule": SPLIT_RULE}


def resolve_part(num_parts: int | None, part_id: int | None, environ: Mapping[str, str]) -> WorkPart | None:
    """The part this process runs, from the options and the scheduler's environment; ``None``: all cases.

    ``num_parts`` is the opt-in: without it the environment is not read, so a process started by a
    scheduler for other reasons still does the whole folder. With it, the index is ``part_id`` when given,
    else ``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` (an array ``--array=1-8`` gives parts
    0-7), else ``JOB_COMPLETION_INDEX`` (a Kubernetes indexed Job).

    Raises:
        ConfigError: ``part_id`` without ``num_parts``; no index anywhere; an index that is not an
            integer or is out of range; ``SLURM_ARRAY_TASK_COUNT`` that disagrees with ``num_parts``.
    """
    if num_parts is None:
        if part_id is not None:
            raise ConfigError(
                f"--part-id {part_id} needs --num-parts (how many parts the folder is split into)"
            )
        return None
    if part_id is not None:
        return WorkPart(part_id, num_parts, "--part-id")
    if "SLURM_ARRAY_TASK_ID" in environ:
        count = environ.get("SLURM_ARRAY_TASK_COUNT")
        if count is not None and _integer(count, "SLURM_ARRAY_TASK_COUNT") != num_parts:
            raise ConfigError(
                f"--num-parts {num_parts} disagrees with SLURM_ARRAY_TASK_COUNT={count}: submit the "
                f"array with as many tasks as parts (sbatch --array=0-{num_parts - 1})"
            )
        index = _integer(environ["SLURM_ARRAY_TASK_ID"], "SLURM_ARRAY_TASK_ID")
        first = _integer(environ.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN")
        return WorkPart(index - first, num_parts, "SLURM_ARRAY_TASK_ID")
    if "JOB_COMPLETION_INDEX" in environ:
        index = _integer(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX")
        return WorkPart(index, num_parts, "JOB_COMPLETION_INDEX")
    raise ConfigError(
        f"--num-parts {num_parts} without --part-id, and neither SLURM_ARRAY_TASK_ID nor "
        "JOB_COMPLETION_INDEX is set: give --part-id (0-based) or run as an array/indexed job"
    )


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer") from None
