"""The four BraTS MR sequences and the fixed order in which the method stacks them."""

from __future__ import annotations

from enum import Enum


class MRISequence(str, Enum):
    """A BraTS MR sequence, named by its file-name tag (docs/METHOD.md, "Cases and file names").

    A ``str`` subclass whose ``str()`` is the tag (``enum.StrEnum`` would do, but needs Python 3.11 and
    the image supports any base with Python 3.10 or newer).
    """

    T1N = "t1n"
    T1C = "t1c"
    T2W = "t2w"
    T2F = "t2f"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


#: The canonical order t1n, t1c, t2w, t2f, in which conditions are stacked (docs/METHOD.md, "Conditioning").
CANONICAL_ORDER: tuple[MRISequence, ...] = tuple(MRISequence)


def condition_order(target: MRISequence | str) -> tuple[MRISequence, MRISequence, MRISequence]:
    """Return the three condition sequences for ``target``, in canonical order.

    Args:
        target: The sequence to synthesise, as an enum member or its tag (``"t2f"``).

    Returns:
        The other three sequences in the order t1n, t1c, t2w, t2f; for example ``t2f`` gives
        ``(t1n, t1c, t2w)`` and ``t1n`` gives ``(t1c, t2w, t2f)``.

    Raises:
        ValueError: ``target`` is not one of the four tags.
    """
    target = MRISequence(target)
    first, second, third = (seq for seq in CANONICAL_ORDER if seq is not target)
    return first, second, third
