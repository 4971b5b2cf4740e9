"""Dataclass configs <-> command-line flags and dicts, strictly.

Every job has one dataclass config; its flags are generated from the fields so `--help` and the
config cannot disagree. Field help comes from `field(metadata={"help": ...})`. Unknown keys and
wrong types are errors, never ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def project_home() -> Path:
    """Where framecast keeps its defaults: `mlruns/` (the MLflow store) and `data/`.

    FRAMECAST_HOME when set, else the current folder. Under `ray job submit` the current folder
    is a temporary copy of the working dir, so submitted jobs set FRAMECAST_HOME.
    """
    return Path(os.environ.get("FRAMECAST_HOME") or Path.cwd()).resolve()


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the bad value and what is accepted."""


# Names MLflow or Serve refuse with a traceback, after the job has done its work: every job
# that has such a flag refuses it empty at once.
NON_BLANK = ("experiment", "app_name")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_bounds(config: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()
                 ) -> None:
    """Refuse (ConfigError) the first of `config`'s fields outside its bound, naming its flag
    and value: `positive` ones must be > 0, `non_negative` ones >= 0."""
    for names, ok, rule in ((positive, lambda v: v > 0, "> 0"),
                            (non_negative, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(config, name)
            if not ok(value):
                raise ConfigError(f"{_flag(name)} {value} must be {rule}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass `cls` (fields named `x_y` become `--x-y`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        shown = default if not isinstance(default, tuple) else " ".join(map(str, default))
        kwargs["help"] = help_text if default in ("", None) else f"{help_text} (default: {shown})"
        origin = typing.get_origin(tp)
        if tp is bool:
            # `--flag` sets True; `--flag false` is accepted too, so a config value can be undone.
            kwargs.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        elif origin is Literal:
            choices = typing.get_args(tp)
            kwargs.update(choices=choices, type=type(choices[0]))
        elif origin is tuple:
            item_types = typing.get_args(tp)
            metavar = ("LO", "HI") if len(item_types) == 2 else None
            kwargs.update(nargs=len(item_types), type=item_types[0], metavar=metavar)
        elif tp in (int, float, str):
            kwargs.update(type=tp, metavar=tp.__name__.upper())
        else:
            raise TypeError(f"unsupported config field type {tp!r} for {f.name}")
        if optional:
            kwargs["help"] += " (optional)"
        parser.add_argument(_flag(f.name), **kwargs)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from a dict, checking every key and converting lists to tuples. A class
    with an `expand_values(values)` classmethod fills in what the given values imply first (a
    preset's settings under the keys given beside it).

    Raises ConfigError on an unknown key or a value of the wrong type.
    """
    if expand := getattr(cls, "expand_values", None):
        values = expand(dict(values))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for {cls.__name__}; "
                          f"accepted: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        tp, optional = _unwrap_optional(hints[name])
        if value is None and optional:
            kwargs[name] = None
            continue
        kwargs[name] = _coerce(name, tp, value)
    return cls(**kwargs)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        item_types = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{name} must be a list of {len(item_types)} values, got {value!r}")
        return tuple(_coerce(name, t, v) for t, v in zip(item_types, value, strict=True))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}={value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


VERBOSE_ENV = "FRAMECAST_VERBOSE"


def parse_args(cls: type[T], argv: list[str] | None = None, *, description: str = "",
               epilog: str = "", prog: str | None = None, verbose_flag: bool = False) -> T:
    """Parse command-line flags into a `cls` instance; `__post_init__` validates it.

    A ConfigError raised while building the config becomes one line on stderr and exit code 2
    (argparse's usage block would bury it).
    `verbose_flag` adds --verbose, which sets FRAMECAST_VERBOSE=1 for this process and Ray.
    `--config FILE` (every job) reads settings from YAML first; flags on the command line win.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_arguments(parser, cls)
    config_flag = "config" not in {f.name for f in dataclasses.fields(cls)}  # type: ignore
    if config_flag:
        parser.add_argument("--config", metavar="FILE", default=None, help=(
            "a YAML file of this job's settings (keys are the flags' names, e.g. the "
            "best_config.yaml of a jobs.tune study); flags given here win over it; unknown keys "
            "are refused"))
    if verbose_flag:
        parser.add_argument("--verbose", action="store_true", help=(
            f"show Ray's own logs, progress blocks and worker output here (default: they go "
            f"to Ray's log folder, named at start); {VERBOSE_ENV}=1 does the same"))
    namespace = vars(parser.parse_args(argv))
    if namespace.pop("verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    try:
        path = namespace.pop("config", None) if config_flag else None
        # Flags are SUPPRESSed unless given, so those given are exactly the ones that win.
        config = from_dict(cls, {**(read_config_file(path) if path else {}), **namespace})
        for name in NON_BLANK:
            if not str(getattr(config, name, "x")).strip():
                raise ConfigError(f"{_flag(name)} must not be empty")
        return config
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def read_yaml(path: str | Path, flag: str) -> Any:
    """A YAML file's content; an unreadable or invalid file is a ConfigError naming `flag` and
    the path in one line."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{flag} {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{flag} {path}: not valid YAML ({str(err).splitlines()[0]})"
                          ) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML file (a mapping of field names, `-` or `_`) for `from_dict`,
    which refuses unknown keys; raises ConfigError naming the file when it is not such a
    mapping."""
    values = read_yaml(path, "--config")
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ConfigError(f"--config {path}: expected a mapping of setting names to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def flat_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Config fields as flat string params (for MLflow `log_params`)."""
    return {prefix + k: str(v) for k, v in to_dict(config).items()}
