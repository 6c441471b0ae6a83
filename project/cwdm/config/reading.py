"""Reading YAML within bounds, and the messages of a refused file: the one YAML reader of the package.

Every YAML file is read within bounds, so that a small hostile file is refused at once instead of
exhausting time or memory: at most :data:`MAX_YAML_BYTES`, collections nested at most
:data:`MAX_YAML_DEPTH` deep, at most :data:`MAX_YAML_VALUES` values once aliases are expanded; a value
quoted in a message is cut short (:func:`shown`). A bad file raises :class:`cwdm.ConfigError` naming the
file, the key, the value and what is allowed.
"""

from __future__ import annotations

import logging
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

from ..errors import ConfigError

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def file_keys(cls) -> list[str]:
        """The keys a file of this kind may hold (what an error message lists as allowed)."""
        return list(cls.model_fields)


#: The largest YAML file read (parameters files take a few hundred bytes, sweep grids a few kilobytes).
MAX_YAML_BYTES = 2**18
#: How deep collections may nest in a YAML file (the deepest we write is two).
MAX_YAML_DEPTH = 32
#: How many values a YAML file may hold once its aliases (``*name``) are expanded: a few hundred bytes
#: of nested aliases would otherwise stand for billions of values ("billion laughs").
MAX_YAML_VALUES = 10_000
#: The most settings a sweep grid may expand to.
MAX_SWEEP_SETTINGS = 10_000
#: How many validation errors a message lists, and how long a value quoted from a file may be.
_SHOWN_ERRORS = 8
_SHOWN_CHARS = 80
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 4, 4, 4
_REPR.maxset, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, _SHOWN_CHARS, _SHOWN_CHARS, 40


def shown(value: Any) -> str:
    """A value read from a file, quoted for a message: its ``repr``, bounded in depth, items and length
    (a value from a file may be megabytes long, or a structure of shared parts far larger unrolled)."""
    return _clip_text(_REPR.repr(value))


def _clip_text(text: str, limit: int = 2 * _SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_errors(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    lines = []
    for error in errors[:_SHOWN_ERRORS]:
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        key = _clip_text(key, _SHOWN_CHARS)
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif not error["loc"] and error["type"] == "value_error":  # a whole-file check names its keys
            lines.append(_clip_text(str(error["msg"]).removeprefix("Value error, ")))
        else:
            # a validator's message may quote the value too (``got ...``): both are cut short
            lines.append(f"key {key!r}: {_clip_text(error['msg'])} (got {shown(error.get('input'))})")
    if len(errors) > _SHOWN_ERRORS:
        lines.append(f"and {len(errors) - _SHOWN_ERRORS} more")
    return f"{source}: " + "; ".join(lines)


def _validate(model: type[_Strict], data: Any, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        allowed = ", ".join(model.file_keys())
        raise ConfigError(_format_errors(source, exc) + f". Allowed keys: {allowed}") from exc


class _YamlTooLarge(yaml.YAMLError):
    """A YAML document nested too deep, or one whose aliases expand to too many values."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two bounds checked while the document is composed, before any value
    is built: how deep collections nest (:data:`MAX_YAML_DEPTH`; the composer recurses, and 50,000
    nested brackets would exhaust Python's stack), and how many values the document holds with its
    aliases expanded (:data:`MAX_YAML_VALUES`; PyYAML shares an aliased value instead of copying it, but
    validating or quoting the result walks every copy). An alias of a collection still being composed
    (a recursive structure) is refused too."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values: dict[int, int] = {}  # id(node) -> its values with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._values:
                raise _YamlTooLarge(
                    f"the alias *{event.anchor[:_SHOWN_CHARS]} refers to a collection that contains it "
                    f"(a recursive structure){event.start_mark}"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _YamlTooLarge(
                f"collections nest more than {MAX_YAML_DEPTH} deep{self.peek_event().start_mark}"
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        values = 1
        if isinstance(node, yaml.SequenceNode):
            values += sum(self._values[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            values += sum(self._values[id(k)] + self._values[id(v)] for k, v in node.value)
        if values > MAX_YAML_VALUES:
            raise _YamlTooLarge(
                f"the document holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are "
                f"expanded{node.start_mark}"
            )
        self._values[id(node)] = values
        return node


def _read_yaml(path: Path) -> Any:
    """The content of a YAML file, read within the bounds above.

    Raises:
        ConfigError: a missing, unreadable, too large or non-UTF-8 file; not YAML; nested too deep or
            expanding to too many values through its aliases.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_YAML_BYTES:,} bytes; a configuration file takes a few hundred"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({_clipped(exc)})") from exc
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _YamlTooLarge as exc:
        raise ConfigError(f"{path}: refused: {_clipped(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_clipped(exc)})") from exc
    except ValueError as exc:  # a value Python refuses to build (an integer of thousands of digits)
        raise ConfigError(f"{path}: refused: {_clipped(exc)}") from exc
    except RecursionError as exc:  # a structure the bounds above let through but Python cannot hold
        raise ConfigError(f"{path}: refused: nested too deep") from exc
    finally:
        loader.dispose()


def _clipped(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (YAML's quote a line of the file)."""
    return _clip_text(" ".join(line.strip() for line in str(exc).splitlines() if line.strip()), limit)
