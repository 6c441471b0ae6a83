"""inference/claims.py: one claim per output, released on finish, dead holders taken over."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from cwdm.inference.claims import ClaimSet, Holder, lock_path


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _plant(output: Path, holder: Holder, age_s: float = 0.0) -> Path:
    path = lock_path(output)
    path.write_text(json.dumps(holder.to_record()))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    output = tmp_path / "case-t2f.nii.gz"
    with ClaimSet() as first, ClaimSet() as second:
        assert first.claim(output) is None
        assert lock_path(output).name == ".cwdm-case-t2f.nii.gz.lock"
        other = second.claim(output)
        assert other is not None and other.holder == first.me and "claimed by" in other.detail
        first.release(output)
        assert not lock_path(output).exists()
        assert second.claim(output) is None
    assert not lock_path(output).exists()  # leaving the set releases what it holds


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    output = tmp_path / "case-t2f.nii.gz"
    me = Holder.this_process()
    dead = Holder(me.host, _dead_pid(), me.boot_id, "12345", "deadbeef", "2026-01-01T00:00:00Z")
    _plant(output, dead)
    with ClaimSet() as claims:
        assert claims.claim(output) is None
        assert claims.taken_over == [(output, dead)]
        assert json.loads(lock_path(output).read_text())["token"] == claims.me.token


def test_a_reused_pid_does_not_keep_a_claim(tmp_path: Path) -> None:
    output = tmp_path / "case-t2f.nii.gz"
    me = Holder.this_process()  # alive, but started at another time than the claim says
    _plant(output, Holder(me.host, me.pid, me.boot_id, "1", "0ld", "then"))
    with ClaimSet() as claims:
        assert claims.claim(output) is None and len(claims.taken_over) == 1


def test_another_hosts_claim_is_judged_by_its_heartbeat(tmp_path: Path) -> None:
    fresh, old = tmp_path / "a-t2f.nii.gz", tmp_path / "b-t2f.nii.gz"
    elsewhere = Holder("node-17", 4242, "other-boot", "99", "feed", "2026-01-01T00:00:00Z")
    _plant(fresh, elsewhere, age_s=10)
    _plant(old, elsewhere, age_s=1000)
    with ClaimSet(stale_after_s=300) as claims:
        other = claims.claim(fresh)
        assert (
            other is not None and "node-17:4242" in other.detail
        )  # can't check the pid: trust the heartbeat
        assert claims.claim(old) is None
        assert [holder for _, holder in claims.taken_over] == [elsewhere]
        assert sorted(p.name for p in claims.live_claims(tmp_path)) == ["a-t2f.nii.gz", "b-t2f.nii.gz"]


def test_the_heartbeat_keeps_a_held_claim_fresh(tmp_path: Path) -> None:
    output = tmp_path / "case-t2f.nii.gz"
    with ClaimSet(heartbeat_s=0.05) as claims:
        claims.claim(output)
        then = time.time() - 1000
        os.utime(lock_path(output), (then, then))
        time.sleep(0.3)
        assert time.time() - lock_path(output).stat().st_mtime < 5


def test_an_unreadable_claim_counts_as_live_until_it_is_old(tmp_path: Path) -> None:
    output = tmp_path / "case-t2f.nii.gz"
    lock_path(output).write_text("")  # a claim being written, or damaged
    with ClaimSet(stale_after_s=300) as claims:
        assert claims.claim(output) is not None
        then = time.time() - 1000
        os.utime(lock_path(output), (then, then))
        assert claims.claim(output) is None
