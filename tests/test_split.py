"""inference/split.py: the deterministic split of a folder's cases between N processes."""

from __future__ import annotations

import hashlib

import pytest

from cwdm.errors import ConfigError
from cwdm.inference.split import WorkPart, part_of, resolve_part

IDS = [f"BraTS-GLI-{n:05d}-000" for n in range(200)]


def test_the_rule_is_the_documented_hash_modulo_n() -> None:
    for case_id in IDS[:20]:
        expected = int(hashlib.sha256(case_id.encode()).hexdigest()[:16], 16) % 7
        assert part_of(case_id, 7) == expected


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_parts_are_disjoint_cover_everything_and_are_balanced(count: int) -> None:
    parts = [WorkPart(index, count).select(IDS, key=str) for index in range(count)]
    assert sorted(sum(parts, [])) == sorted(IDS)
    assert all(len(p) > len(IDS) / count / 2 for p in parts)  # no part starved (200 ids)


def test_adding_cases_never_moves_a_case_to_another_part() -> None:
    before = {case_id: part_of(case_id, 5) for case_id in IDS}
    grown = IDS + [f"BraTS-MEN-{n:05d}-000" for n in range(50)]
    assert {case_id: part_of(case_id, 5) for case_id in grown if case_id in before} == before


def test_selection_keeps_the_given_order() -> None:
    part = WorkPart(1, 3)
    assert part.select(IDS, key=str) == [c for c in IDS if part_of(c, 3) == 1]


def test_index_from_options_and_schedulers() -> None:
    assert resolve_part(None, None, {"SLURM_ARRAY_TASK_ID": "3"}) is None  # no --num-parts: no split
    assert resolve_part(4, 2, {}) == WorkPart(2, 4, "--part-id")
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_part(8, None, slurm) == WorkPart(4, 8, "SLURM_ARRAY_TASK_ID")
    assert resolve_part(3, None, {"JOB_COMPLETION_INDEX": "2"}) == WorkPart(2, 3, "JOB_COMPLETION_INDEX")
    assert resolve_part(3, 0, {"JOB_COMPLETION_INDEX": "2"}).index == 0  # the option wins


@pytest.mark.parametrize(
    ("num_parts", "part_id", "environ", "words"),
    [
        (None, 1, {}, "needs --num-parts"),
        (3, None, {}, "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
        (3, 3, {}, "outside 0..2"),
        (3, None, {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX='x' is not an integer"),
        (4, None, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"}, "disagrees with"),
        (0, 0, {}, "at least 1"),
    ],
)
def test_bad_split_options_name_the_problem(
    num_parts: int | None, part_id: int | None, environ: dict, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        resolve_part(num_parts, part_id, environ)
