"""Any segmenter a user can call, as a :class:`cwdm.segmentation.Segmenter`: a command run once a case.

For each case a fresh temporary folder receives the input in the BraTS naming, ``{input}/<case>/
<case>-<seq>.nii.gz`` (hard links to the case's files where the file system allows, else copies: real
files, so that a container that mounts ``{input}`` sees them), and an empty ``{output}`` folder. The
command's arguments have ``{input}``, ``{output}`` and ``{case}`` replaced, and it is run without a
shell, with a time limit. The label volume is read from the ``output`` template (``{output}/{case}.nii.gz``,
the BraTS segmentation challenge's output naming) and its labels mapped from the declared convention. A
command that fails, times out or writes nothing is a :class:`SegmentationError` for that case, naming the
command, its exit status and the end of its output.

Examples of commands: a BraTS segmentation container, ``docker run --rm --network none -v {input}:/input:ro
-v {output}:/output IMAGE``; a script, ``python my_segmenter.py {input}/{case} {output}/{case}.nii.gz``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..cases.volumes import VolumeError, read_labels
from ..config import CommandSegmenterSpec, shown
from ..errors import ConfigError
from ..sequences import CANONICAL_ORDER
from .case import CompleteCase, SegmentationError, checked_labels
from .labels import convention_mapping, mapping_from_structures

log = logging.getLogger(__name__)

#: How much of a failed command's output goes into the error message.
_OUTPUT_TAIL = 800
_PLACEHOLDERS = ("input", "output", "case")


class CommandSegmenter:
    """Runs ``spec.command`` once per case.

    Args:
        spec: The command template, where its result is, its label convention and time limit.

    Raises:
        ConfigError: an empty command, or a placeholder other than ``{input}``, ``{output}``, ``{case}``.
    """

    def __init__(self, spec: CommandSegmenterSpec) -> None:
        self.spec = spec
        self.arguments = shlex.split(spec.command) if isinstance(spec.command, str) else list(spec.command)
        if not self.arguments:
            raise ConfigError("segmenter command: empty command")
        for text in [*self.arguments, spec.output]:
            try:
                text.format(input="", output="", case="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"segmenter command: {shown(text)} uses an unknown placeholder or braces "
                    f"({_clip(str(exc), 200)}); "
                    f"the placeholders are {', '.join('{' + p + '}' for p in _PLACEHOLDERS)}"
                ) from exc
        self.mapping = (
            convention_mapping(spec.labels)
            if isinstance(spec.labels, str)
            else mapping_from_structures(spec.labels, "segmenter command labels")
        )
        self.name = f"command ({Path(self.arguments[0]).name})"

    def segment(self, case: CompleteCase) -> np.ndarray:
        """Canonical labels of ``case`` on its grid.

        Raises:
            SegmentationError: the command failed, timed out or left no readable label volume, or the
                volume is off the case's grid or holds labels the convention does not define.
        """
        case.grid  # noqa: B018 (reads and checks the four volumes before the command runs)
        with tempfile.TemporaryDirectory(prefix="cwdm-segment-") as tmp:
            input_dir, output_dir = Path(tmp) / "input", Path(tmp) / "output"
            case_dir = input_dir / case.case_id
            case_dir.mkdir(parents=True)
            output_dir.mkdir()
            for seq in CANONICAL_ORDER:
                source = Path(case.files[seq]).resolve()
                suffix = ".nii.gz" if source.name.endswith(".gz") else ".nii"
                _place(source, case_dir / f"{case.case_id}-{seq}{suffix}")
            values = {"input": str(input_dir), "output": str(output_dir), "case": case.case_id}
            argv = [argument.format(**values) for argument in self.arguments]
            result_path = Path(self.spec.output.format(**values))
            self._run(argv, case)
            if not result_path.is_file():
                listing = ", ".join(sorted(p.name for p in output_dir.iterdir())) or "nothing"
                raise SegmentationError(
                    case.case_id,
                    f"segmenter {self.name} exited with 0 but wrote no {result_path.name} for the "
                    f"{case.label} case (its output folder holds {listing})",
                    result_path,
                )
            try:  # the case reader's checks: a damaged or hostile file is refused before it is inflated
                labels = np.array(read_labels(result_path))
            except VolumeError as exc:
                raise SegmentationError(
                    case.case_id, f"cannot read the segmentation {result_path.name}: {exc}", result_path
                ) from exc
            return checked_labels(labels, case, self.name, self.mapping, result_path)

    def _run(self, argv: list[str], case: CompleteCase) -> None:
        if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
            raise SegmentationError(case.case_id, f"segmenter command not found: {shown(argv[0])}")
        environment = dict(os.environ) | dict(self.spec.environment)
        log.debug("%s: %s", case.case_id, shlex.join(argv))
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.spec.timeout_s,
                env=environment,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SegmentationError(
                case.case_id,
                f"segmenter {self.name} did not finish the {case.label} case within "
                f"{self.spec.timeout_s:g} s",
            ) from exc
        except OSError as exc:
            raise SegmentationError(case.case_id, f"cannot run {shown(argv[0])}: {exc}") from exc
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout or "").strip()[-_OUTPUT_TAIL:]
            raise SegmentationError(
                case.case_id,
                f"segmenter {self.name} exited with status {completed.returncode} on the {case.label} "
                f"case: {_clip(shlex.join(argv), _OUTPUT_TAIL)}"
                + (f"; its output ends: {tail}" if tail else ""),
            )


def _place(source: Path, destination: Path) -> None:
    """A hard link to ``source`` (no copy), or a copy where the file systems differ."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
