"""Settings of a command, declared once: each field of a :class:`Settings` dataclass is at the same time a YAML
key, a command-line flag (``batch_size`` -> ``--batch-size``), a validated value, part of the configuration
hash, and either part of what a run computes or an *execution* setting that may change when it is resumed.

A command declares its settings with :func:`setting` and gets, for free: coercion and one-line validation
errors (``epochs must be a positive integer, got 0``), :meth:`Settings.from_layers` (defaults < YAML file <
flags), :meth:`Settings.add_arguments` / :meth:`Settings.from_args` (argparse), :meth:`Settings.config_hash`
and :meth:`Settings.check_resumable`. ``None`` means "auto": derived when the run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from peffnet.errors import ConfigError

S = TypeVar("S", bound="Settings")


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, float)):
        raise ValueError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ValueError
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        raise ValueError
    return str(value)


@dataclass(frozen=True)
class Kind:
    """How a setting's value is read: ``parse`` raises ValueError/TypeError for a value that is not a ``noun``;
    ``python`` are the types a library function accepts as such a value without parsing (:func:`require`)."""

    noun: str  # "integer", "number", ... (the word a message uses)
    parse: Callable[[Any], Any]
    python: tuple[type, ...] = (object,)
    many: bool = False  # a list of such values (a comma-separated flag, a YAML list)


def _to_batch(value: Any) -> int | str:
    if value == "max":
        return value
    batch = _to_int(value)
    if batch <= 0:
        raise ValueError
    return batch


INT = Kind("integer", _to_int, (int,))
FLOAT = Kind("number", _to_float, (int, float))
BOOL = Kind("boolean (true or false)", _to_bool, (bool,))
TEXT = Kind("string", _to_text, (str,))
INTS = Kind("integer", _to_int, (int,), many=True)
TEXTS = Kind("string", _to_text, (str,), many=True)
FLOATS = Kind("number", _to_float, (int, float), many=True)
BATCH = Kind("positive integer or 'max'", _to_batch, (int, str))  # a batch size, or the largest that fits


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Check:
    """A condition on a parsed value; ``text`` completes "NAME must be ...", ``{noun}`` is the kind's noun."""

    test: Callable[[Any], bool]
    text: str

    def describe(self, kind: Kind) -> str:
        text = self.text.format(noun=kind.noun)
        return f"{_article(kind.noun)} {text[2:]}" if self.text.startswith("a {noun}") else text


POSITIVE = Check(lambda v: v > 0, "a positive {noun}")
NON_NEGATIVE = Check(lambda v: v >= 0, "a {noun} >= 0")
FRACTION = Check(lambda v: 0 <= v < 1, "a {noun} in [0, 1)")
OPEN_UNIT = Check(lambda v: 0 < v < 1, "a {noun} in (0, 1)")
UNIT = Check(lambda v: 0 < v <= 1, "a {noun} in (0, 1]")


def setting(default: Any, help: str, kind: Kind = TEXT, check: Check | None = None,
            choices: tuple[str, ...] | None = None, *, execution: bool = False, positional: bool = False,
            group: str | None = None, flag: bool = True, required: bool = False, metavar: str | None = None,
            resumable: bool = False, const: Any = None) -> Any:
    """Declare one setting of a :class:`Settings` dataclass.

    Args:
        default: the default (``None``: "auto", filled in when the run starts; ``""``: required).
        help: one line for ``--help`` and the docs.
        kind, check, choices: how the value is parsed and validated.
        execution: changes how a run executes but not what it computes (free to change on resume,
            left out of the configuration hash).
        positional: a positional command-line argument instead of a ``--flag``.
        group: the ``--help`` section it is listed under.
        flag: ``False`` for a setting that only YAML files and the Python API set.
        required: ``None`` (the default then) is refused.
        metavar: the value's name in ``--help`` (default: the setting's name in capitals).
        resumable: changes what a run computes but may still change when it is resumed (kept in the
            configuration hash; :meth:`Settings.resume_changes` reports the change, the run applies it).
        const: the value of the bare flag (``--resume`` alone); the flag then takes an optional value.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "kind": kind, "check": check, "choices": choices, "execution": execution,
        "positional": positional, "group": group, "flag": flag, "required": required,
        "metavar": metavar, "resumable": resumable, "const": const})


def _refuse(name: str, value: Any, kind: Kind, check: Check | None) -> NoReturn:
    noun = kind.noun if not check or "{noun}" not in check.text else check.describe(kind).removeprefix("a ")
    raise ConfigError(f"{name} must be {_article(noun)} {noun}, got {value!r}")


def _coerce_one(name: str, value: Any, kind: Kind, check: Check | None, choices: tuple[str, ...] | None) -> Any:
    try:
        value = kind.parse(value)
    except (TypeError, ValueError):
        _refuse(name, value, kind, check)
    if choices and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if check and not check.test(value):
        raise ConfigError(f"{name} must be {check.describe(kind)}, got {value!r}")
    return value


def coerce(name: str, value: Any, kind: Kind = TEXT, check: Check | None = None,
           choices: tuple[str, ...] | None = None) -> Any:
    """``value`` (from YAML, a flag or the Python API) as ``kind``, validated; ``None`` stays ``None``.

    Raises:
        ConfigError: one line naming the setting, what it must be and the value given.
    """
    if value is None:
        return None
    if kind.many:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name} must be a list of {kind.noun}s, got {value!r}")
        return [_coerce_one(name, v.strip() if isinstance(v, str) else v, kind, check, choices)
                for v in items if not (isinstance(v, str) and not v.strip())]
    return _coerce_one(name, value, kind, check, choices)


def require(name: str, value: Any, kind: Kind = INT, check: Check | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A value given to a library function, checked like a setting but not parsed (``"3"`` is no integer
    here); the same one-line errors as :func:`coerce`."""
    if (isinstance(value, bool) and kind is not BOOL) or not isinstance(value, kind.python):
        _refuse(name, value, kind, check)
    return coerce(name, value, kind, check, choices)


@dataclass
class Settings:
    """Base class of a command's settings: subclass it as a dataclass whose fields are :func:`setting`s."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            m = f.metadata
            if m["required"] and getattr(self, f.name) in (None, ""):
                raise ConfigError(f"{f.name} is required: {m['help']}")
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), m["kind"], m["check"], m["choices"]))

    # ------------------------------------------------------------------ building

    @classmethod
    def field_map(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def default(cls, name: str) -> Any:
        """A setting's default as its values look (a tuple default of a list setting becomes a list)."""
        f = cls.field_map()[name]
        return list(f.default) if isinstance(f.default, tuple) else f.default

    @classmethod
    def from_layers(cls: type[S], *layers: dict[str, Any]) -> S:
        """Defaults overridden by each layer of settings in turn (``None`` values skipped), validated."""
        fields = cls.field_map()
        values: dict[str, Any] = {}
        for layer in layers:
            unknown = sorted(set(layer) - set(fields))
            if unknown:
                raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
            values.update({k: v for k, v in layer.items() if v is not None})
        return cls(**values)

    @classmethod
    def read_yaml(cls, path: str | Path) -> dict[str, Any]:
        """The settings of a YAML file (keys as field names; dashes accepted), unknown keys refused."""
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of settings, got {type(loaded).__name__}")
        settings = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = sorted(set(settings) - set(cls.field_map()))
        if unknown:
            raise ConfigError(f"config {path} has unknown setting(s): {', '.join(unknown)}")
        return settings

    # ------------------------------------------------------------------ command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        """One argument per setting: ``--name-with-dashes`` (booleans also ``--no-...``), or positional.
        Values are parsed by :func:`coerce` (not argparse), so flags, YAML and the API give the same errors."""
        groups: dict[str | None, Any] = {None: parser}
        fields = cls.field_map()
        late = {n for base in cls.__mro__ if base.__dict__.get("trailing") for n in base.__dict__["__annotations__"]}
        for name, f in sorted(fields.items(), key=lambda item: item[0] in late):  # stable: declaration order
            m = f.metadata
            if name in skip or not m["flag"]:
                continue
            target = groups.get(m["group"]) or groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
            escaped = m["help"].replace("%", "%%")  # argparse %-formats help texts
            help_text = escaped
            if f.default == "" or m["required"]:
                help_text += " [required]"
            elif f.default not in (None, False, ()) and "(default" not in help_text:
                shown = ",".join(map(str, f.default)) if isinstance(f.default, (list, tuple)) else f.default
                help_text += f" [default: {'on' if f.default is True else shown}]"
            metavar = m["metavar"] or ("{" + ",".join(m["choices"]) + "}" if m["choices"] else name.upper())
            if m["positional"]:
                nargs = ("+" if m["required"] else "*") if m["kind"].many else (None if m["required"] else "?")
                target.add_argument(name, nargs=nargs, help=escaped, metavar=metavar)
            elif m["kind"] is BOOL:
                target.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                    default=None, help=help_text)
            elif m["const"] is not None:
                target.add_argument("--" + name.replace("_", "-"), nargs="?", const=m["const"], default=None,
                                    help=help_text, metavar=metavar)
            else:
                target.add_argument("--" + name.replace("_", "-"), default=None, help=help_text, metavar=metavar)

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, *layers: dict[str, Any]) -> S:
        """The settings of parsed arguments, over ``layers`` (e.g. a YAML file's settings)."""
        flags = {name: getattr(args, name) for name in cls.field_map() if getattr(args, name, None) is not None}
        return cls.from_layers(*layers, flags)

    # ------------------------------------------------------------------ records

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (YAML, JSON and checkpoint safe)."""
        return dataclasses.asdict(self)

    def recorded_in(self: S, directory: str | os.PathLike) -> S:
        """These settings as a file in ``directory`` records them: ``out``, where the command writes, relative
        to ``directory`` (``.`` for the directory itself), so that results moved or shipped elsewhere name no
        folder of the machine that made them (docs/formats.md). Inputs (data, checkpoints read) stay as given."""
        out = getattr(self, "out", None)
        if not out:
            return self
        return dataclasses.replace(self, out=os.path.relpath(os.path.abspath(out), os.path.abspath(directory)))

    def computed(self) -> dict[str, Any]:
        """The settings that change what a run computes (execution settings left out)."""
        fields = self.field_map()
        return {k: v for k, v in self.to_dict().items() if not fields[k].metadata["execution"]}

    def config_hash(self) -> str:
        """Fingerprint of what a run computes: 12 hex digits."""
        return hashlib.sha256(json.dumps(self.computed(), sort_keys=True).encode()).hexdigest()[:12]

    def resume_changes(self, saved: dict[str, Any], what: str = "the checkpoint") -> dict[str, tuple[Any, Any]]:
        """:meth:`check_resumable`, except that the settings declared ``resumable`` may differ: returns those
        differences as ``{name: (saved value, this value)}`` for the run to apply (and record)."""
        changes = {}
        for name, f in self.field_map().items():
            before = saved.get(name, f.default)
            if f.metadata["resumable"] and before != getattr(self, name):
                changes[name] = (before, getattr(self, name))
        self.check_resumable({**saved, **{name: now for name, (_, now) in changes.items()}}, what)
        return changes

    def command_line(self, command: str) -> str:
        """The equivalent command line (settings that differ from their defaults), for the record."""
        parts = ["peffnet", command]
        for name, f in self.field_map().items():
            value, m = getattr(self, name), f.metadata
            if m["positional"]:
                parts += [str(v) for v in (value if isinstance(value, list) else [value])]
            elif m["flag"] and value != self.default(name):
                flag = "--" + name.replace("_", "-")
                if m["kind"] is BOOL:
                    parts.append(flag if value else "--no-" + name.replace("_", "-"))
                else:
                    parts += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        return " ".join(shlex.quote(p) for p in parts)

    def check_resumable(self, saved: dict[str, Any], what: str = "the checkpoint") -> None:
        """A one-line error when ``saved`` (a run's recorded settings) differs from these in anything but
        execution settings. A setting added since that run was saved counts as its default."""
        for name, value in self.computed().items():
            before = saved.get(name, self.default(name))
            if before != value:
                raise ConfigError(f"{what} was trained with {name}={before!r}, this run has {value!r}; resume with "
                                  f"the same settings or use another --out")
