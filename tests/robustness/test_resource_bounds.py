"""Small hostile files must be refused quickly and in bounded memory: a ``.nii.gz`` whose honest header
is followed by a gzip stream that inflates to gigabytes, and YAML files that expand exponentially
through their aliases ("billion laughs") or nest 50,000 deep.

Each reader or loader runs in a fresh interpreter, started by an intermediate one whose
``RUSAGE_CHILDREN`` then holds that child's peak resident memory alone; the time is measured around the
call inside the child (so that importing the package on a loaded machine does not count). Each hostile
file is compared with a good file read the same way.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cwdm
from cwdm.cases import gzip_codec
from cwdm.config import expand_sweep_grid, load_model_spec, load_run_parameters
from cwdm.errors import ConfigError

from .conftest import good_levels, gzip_bomb, nifti_bytes
from .test_weights_and_parameters import BILLION_LAUGHS, NESTED_BRACKETS

#: The folder that holds the package under test, for the children's ``PYTHONPATH``.
PACKAGE_ROOT = Path(cwdm.__file__).resolve().parents[1]
#: How much more memory (MiB) than the good file a refused file may take, and how long its refusal.
EXTRA_MIB = 64
REFUSAL_S = 3.0

_WRAPPER = textwrap.dedent(
    """
    import json, resource, subprocess, sys
    done = subprocess.run(
        [sys.executable, "-c", sys.argv[1]], capture_output=True, text=True, timeout=float(sys.argv[2])
    )
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {"rc": done.returncode, "out": done.stdout, "err": done.stderr[-3000:], "peak": peak_mib}
    print(json.dumps(record))
    """
)


def measured(code: str, timeout_s: float = 120.0) -> tuple[dict, float]:
    """Run ``code`` in a fresh interpreter; the JSON it prints on its last line, and its peak memory (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, code, str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["rc"] == 0, result["err"]
    return json.loads(result["out"].splitlines()[-1]), result["peak"]


def _call(setup: str, call: str) -> str:
    """Child code: ``setup``, then ``call`` timed; prints the error type and message (or "") and seconds."""
    return textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from cwdm.errors import CwdmError
        {setup}
        start = time.perf_counter()
        try:
            {call}
            error = ""
        except CwdmError as exc:
            error = type(exc).__name__ + ": " + str(exc)
        print(json.dumps({{"error": error, "elapsed_s": time.perf_counter() - start}}))
        """
    )


def test_a_gzip_stream_inflating_far_past_its_header_is_refused_in_bounded_memory_and_time(
    tmp_path: Path,
) -> None:
    content = nifti_bytes(good_levels(3))  # an honest header and volume (204,640 bytes)
    good = tmp_path / "BraTS-GLI-00900-000-t1n.nii.gz"
    good.write_bytes(gzip.compress(content))
    bomb = tmp_path / "BraTS-GLI-00900-000-t1c.nii.gz"
    bomb.write_bytes(gzip_bomb(content, extra_mib=2048))  # 2 MB on disk, 2 GiB inflated
    assert bomb.stat().st_size < 3 * 2**20
    setup = "from cwdm.cases.reader import read_case_file"

    clean, clean_mib = measured(
        _call(setup, f"read_case_file('BraTS-GLI-00900-000', Path({str(good)!r}), 't1n')")
    )
    refused, refused_mib = measured(
        _call(setup, f"read_case_file('BraTS-GLI-00900-000', Path({str(bomb)!r}), 't1c volume')")
    )

    assert clean["error"] == ""
    assert refused["error"].startswith("VolumeReadError: BraTS-GLI-00900-000: cannot use the t1c volume")
    assert bomb.name in refused["error"] and "inflates to more than" in refused["error"]
    assert refused["elapsed_s"] < REFUSAL_S, refused
    assert refused_mib < clean_mib + EXTRA_MIB, (refused_mib, clean_mib)


_GOOD_YAML = {
    "parameters": ("load_run_parameters", "sampling_steps: 10\n"),
    "model.yaml": ("load_model_spec", "model_channels: 8\nchannel_mult: [1, 2]\nnum_groups: 8\n"),
    "segmenter.yaml": ("load_segmenter_spec", "kind: reference\nblocks_down: [1, 2]\nblocks_up: [1]\n"),
    "sweep grid": ("load_sweep_grid", "- {sampler: ddim, sampling_steps: [1, 2]}\n"),
}
_HOSTILE_YAML = {
    "billion laughs": ("more than 10,000 values once its aliases", BILLION_LAUGHS),
    "50,000 nested brackets": ("nest more than 32 deep", NESTED_BRACKETS),
}


def _hostile(kind: str, text: str) -> str:
    """``text`` (whose hostile value is under ``sampling_steps``) as a file of ``kind``."""
    if kind == "model.yaml":
        return text.replace("sampling_steps", "channel_mult")
    if kind == "segmenter.yaml":
        return "kind: reference\n" + text.replace("sampling_steps", "blocks_down")
    if kind == "sweep grid":  # a list of one entry that holds every key
        return "- " + "\n  ".join(text.splitlines()) + "\n"
    return text


@pytest.mark.parametrize("hostile", list(_HOSTILE_YAML))
@pytest.mark.parametrize("kind", list(_GOOD_YAML))
def test_an_exploding_yaml_file_is_refused_in_bounded_memory_and_time(
    kind: str, hostile: str, tmp_path: Path
) -> None:
    loader, good_text = _GOOD_YAML[kind]
    words, text = _HOSTILE_YAML[hostile]
    good, bad = tmp_path / "good.yaml", tmp_path / "hostile.yaml"
    good.write_text(good_text)
    bad.write_text(_hostile(kind, text))
    assert bad.stat().st_size < 400_000
    setup = f"from cwdm.config import {loader}"

    clean, clean_mib = measured(_call(setup, f"{loader}(Path({str(good)!r}))"))
    refused, refused_mib = measured(_call(setup, f"{loader}(Path({str(bad)!r}))"))

    assert clean["error"] == ""
    assert refused["error"].startswith(f"ConfigError: {bad}: refused: "), refused
    assert words in refused["error"]
    assert len(refused["error"]) < 500  # the expanded value is never formatted
    assert refused["elapsed_s"] < REFUSAL_S, refused
    assert refused_mib < clean_mib + EXTRA_MIB, (refused_mib, clean_mib)


def test_a_sweep_grid_of_a_trillion_settings_is_refused_before_any_is_built() -> None:
    entry = {key: list(range(1, 101)) for key in ("sampling_steps", "samples", "seed")}
    entry |= {
        "sampler": ["ddpm", "ddim"] * 50,
        "postprocess": ["brain_mask"] * 100,
        "precision": ["fp32"] * 100,
    }
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"grid\.yaml: entry 1 expands to 1,000,000,000,000 settings"):
        expand_sweep_grid([entry], "grid.yaml")
    assert time.perf_counter() - start < 1.0


def test_a_message_lists_a_few_of_many_errors_and_quotes_values_bounded(tmp_path: Path) -> None:
    parameters = tmp_path / "parameters.yaml"
    value = "x" * 1000
    parameters.write_text(f"sampler: {value}\n" + "".join(f"key{n}: {value}\n" for n in range(200)))
    with pytest.raises(ConfigError) as caught:
        load_run_parameters(parameters)
    message = str(caught.value)
    assert message.startswith(f"{parameters}: key 'sampler': Input should be 'ddpm' or 'ddim' (got 'xxx")
    assert "unknown key 'key0'" in message and "and 193 more" in message
    assert len(message) < 2_000


@pytest.mark.parametrize("implementation", ["isal", "zlib"])
def test_both_inflaters_stop_at_the_bound(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if implementation == "zlib":
        monkeypatch.setattr(gzip_codec, "_isal_zlib", None)
    elif gzip_codec._isal_zlib is None:
        pytest.skip("isal is not installed")
    content = nifti_bytes(good_levels(3))
    honest = gzip.compress(content[:1000]) + gzip.compress(content[1000:])  # two members
    assert gzip_codec.decompress(honest, max_size=len(content)) == content
    with pytest.raises(gzip_codec.GzipSizeError, match=f"more than {len(content) - 1:,} bytes"):
        gzip_codec.decompress(honest, max_size=len(content) - 1)
    start = time.perf_counter()
    with pytest.raises(gzip_codec.GzipSizeError):
        gzip_codec.decompress(gzip_bomb(content, extra_mib=256), max_size=len(content) + 2**20)
    assert time.perf_counter() - start < REFUSAL_S
    with pytest.raises(gzip_codec.GzipError, match="end-of-stream marker"):
        gzip_codec.decompress(honest[:-40])


def test_an_architecture_of_a_4000_digit_width_is_refused_with_a_short_message(tmp_path: Path) -> None:
    spec = tmp_path / "model.yaml"
    spec.write_text("model_channels: " + "7" * 4000 + "\nchannel_mult: [1, 2]\nnum_groups: 8\n")
    with pytest.raises(ConfigError, match="num_groups") as caught:
        load_model_spec(spec)
    assert str(caught.value).startswith(str(spec)) and len(str(caught.value)) < 1_000
