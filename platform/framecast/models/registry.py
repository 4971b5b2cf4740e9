"""One table of models: `create(name, preset=..., **overrides)` builds any of them.

Every model speaks the same interface: `forward(uint8 video (B, T, H, W, C))` returns logits
(B, T - k, H, W, C, 256) for the frames after its first `k = model.context_frames`, each frame's
logits depending only on earlier frames; `model.frames_per_step` frames are predicted per step
(a rollout appends that many placeholder frames and reads their logits). Jobs never branch on a
model's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from framecast.config import ConfigError, from_dict, to_dict


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    build: Callable[[Any], nn.Module]
    presets: dict[str, dict[str, Any]]


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config_cls: type, presets: dict[str, dict[str, Any]]
                   ) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    def wrap(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        _MODELS[name] = ModelEntry(config_cls, build, presets)
        return build
    return wrap


def available_models() -> list[str]:
    _load_builtin()
    return sorted(_MODELS)


def presets(name: str) -> list[str]:
    return sorted(_entry(name).presets)


def _entry(name: str) -> ModelEntry:
    _load_builtin()
    if name not in _MODELS:
        raise ConfigError(f"model {name!r} is unknown; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def model_config(name: str, preset: str = "small", **overrides: Any) -> Any:
    """The config dataclass of `name` at `preset`, with strictly checked overrides."""
    entry = _entry(name)
    if preset not in entry.presets:
        raise ConfigError(f"preset {preset!r} of {name} is unknown; "
                          f"available: {', '.join(sorted(entry.presets))}")
    base = to_dict(entry.config_cls())
    return from_dict(entry.config_cls, {**base, **entry.presets[preset], **overrides})


def create(name: str, preset: str = "small", **overrides: Any) -> nn.Module:
    """Build model `name` at `preset` (tiny: tests, small: CPU, paper: the paper's sizes)."""
    return _entry(name).build(model_config(name, preset, **overrides))


def create_from_config(name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the config dict saved with it."""
    entry = _entry(name)
    return entry.build(from_dict(entry.config_cls, config))


def _load_builtin() -> None:
    # Importing a model module registers it.
    from framecast.models import vblt_entry  # noqa: F401
