"""One table of models: `create(name, preset=..., **overrides)` builds any of them.

A model registers its class (a family of `framecast.models.contract`) with its presets:

    register_model("vblt", {"tiny": {...}, "small": {...}})(VBLT)

Overrides are checked strictly against the class's config dataclass, from Python (`create(...,
dim=96)`) or from a job's `--model-config dim=96,patch=1x4x4` (`parse_overrides`). Jobs never
branch on a model's name.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from framecast.config import ConfigError, from_dict, to_dict
from framecast.models.contract import Model

FrameShape = tuple[int, int, int, int]  # (T, H, W, C)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    model_class: type[Model]
    presets: dict[str, dict[str, Any]]

    @property
    def config_class(self) -> type:
        return self.model_class.config_class

    def build(self, config: Any, **components: Model) -> Model:
        """An instance from a config dataclass (and its component models)."""
        model = self.model_class(config, **components)
        model.registry_name = self.name
        return model


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, presets: dict[str, dict[str, Any]]
                   ) -> typing.Callable[[type[Model]], type[Model]]:
    """Class decorator (or call): make `name` buildable with these presets."""
    def wrap(cls: type[Model]) -> type[Model]:
        if not (isinstance(cls, type) and issubclass(cls, Model)):
            raise TypeError(f"{name}: {cls!r} is not a framecast.models.contract.Model")
        _MODELS[name] = ModelEntry(name, cls, presets)
        return cls
    return wrap


def available_models(family: str | None = None) -> list[str]:
    """Registered names, optionally only those of one family (e.g. 'frame_predictor')."""
    _load_builtin()
    return sorted(n for n, e in _MODELS.items()
                  if family is None or e.model_class.family == family)


def presets(name: str) -> list[str]:
    return sorted(entry(name).presets)


def entry(name: str) -> ModelEntry:
    _load_builtin()
    if name not in _MODELS:
        raise ConfigError(f"model {name!r} is unknown; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def model_config(name: str, preset: str = "small", frame_shape: FrameShape | None = None,
                 **overrides: Any) -> Any:
    """The config dataclass of `name` at `preset`, with strictly checked overrides, fitted to
    data of `frame_shape` (T, H, W, C) when given (the config's `for_data`)."""
    found = entry(name)
    if preset not in found.presets:
        raise ConfigError(f"preset {preset!r} of {name} is unknown; "
                          f"available: {', '.join(sorted(found.presets))}")
    base = to_dict(found.config_class())
    try:
        config = from_dict(found.config_class, {**base, **found.presets[preset], **overrides})
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # the config's own checks (__post_init__)
        raise ConfigError(f"{name} {preset}: {err}") from None
    if frame_shape is not None and hasattr(config, "for_data"):
        config = config.for_data(tuple(frame_shape))
    return config


def build(name: str, config: Any, **components: Model) -> Model:
    """An instance of model `name` from its config dataclass (and its component models)."""
    return entry(name).build(config, **components)


def create(name: str, preset: str = "small", **overrides: Any) -> Model:
    """Build model `name` at `preset` (tiny: tests, small: CPU, paper: the paper's sizes)."""
    return build(name, model_config(name, preset, **overrides))


def create_from_config(name: str, config: dict[str, Any], **components: Model) -> Model:
    """Rebuild a model from the config dict saved with it."""
    return build(name, from_dict(entry(name).config_class, config), **components)


def parse_overrides(name: str, text: str) -> dict[str, Any]:
    """`KEY=VALUE[,KEY=VALUE...]` -> typed overrides of model `name`'s config; tuples are
    written with x (`patch=2x4x4`), booleans true/false. Unknown keys and bad values raise
    ConfigError naming them."""
    cls = entry(name).config_class
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--model-config {item!r}: expected KEY=VALUE")
        if key not in hints:
            raise ConfigError(f"--model-config: {name} has no field {key!r}; "
                              f"fields: {', '.join(fields)}")
        out[key] = _parse_value(key, hints[key], value.strip())
    return out


def _parse_value(key: str, tp: Any, text: str) -> Any:
    origin = typing.get_origin(tp)
    try:
        if origin is tuple:
            items = typing.get_args(tp)
            parts = text.lower().split("x")
            if len(parts) != len(items):
                raise ValueError
            return tuple(t(p) for t, p in zip(items, parts, strict=True))
        if origin is Literal:
            choices = typing.get_args(tp)
            if text not in [str(c) for c in choices]:
                raise ValueError
            return next(c for c in choices if str(c) == text)
        if tp is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        return tp(text)
    except ValueError:
        shown = "x".join(t.__name__ for t in typing.get_args(tp)) if origin is tuple else (
            getattr(tp, "__name__", str(tp)))
        raise ConfigError(f"--model-config {key}={text!r}: expected {shown}") from None


def _load_builtin() -> None:
    # Importing a model module registers it.
    from framecast.models import fsq, nbp, unet3d, vblt_entry, vivit  # noqa: F401
