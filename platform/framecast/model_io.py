"""Save and load models as tensors + JSON (never pickles), locally and through MLflow.

A saved model is a folder: `model.pt` (a state dict, loaded with weights_only=True) and
`model.json` (registry name, family, config, what data it was trained on; the registry name and
config of each component model it contains, e.g. a generator's tokenizer, whose tensors are in
the same state dict, so one folder loads a working composite; for a quantized model also
`precision` and its `quant_plan`, from which the int8 / fp16 structure is rebuilt before the
tensors load). In MLflow it is
logged as a pyfunc model whose loader is this module, so the registry can hold it and
`mlflow.pyfunc.load_model` works, without pickled Python objects.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from framecast.config import to_dict
from framecast.models.registry import create_from_config

WEIGHTS, META = "model.pt", "model.json"
ARTIFACT = "model"  # the MLflow artifact name of a logged model


def save_model(directory: str | Path, model: nn.Module, name: str = "",
               extra: dict | None = None) -> Path:
    """Write the model's tensors and JSON meta; `name` defaults to its registry name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS)
    meta = {"name": name or model.registry_name, "family": model.family,
            "config": to_dict(model.cfg),
            "components": {attr: {"name": part.registry_name, "config": to_dict(part.cfg)}
                           for attr, part in model.components().items()},
            **(extra or {})}
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / META).read_text())


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from its JSON config and load its tensors (weights_only=True)."""
    directory = Path(directory)
    meta = read_meta(directory)
    parts = {attr: create_from_config(part["name"], part["config"])
             for attr, part in meta.get("components", {}).items()}
    model = create_from_config(meta["name"], meta["config"], **parts)
    state = torch.load(directory / WEIGHTS, map_location=device, weights_only=True)
    if meta.get("quant_plan"):
        from framecast.quant.apply import empty_quantized
        from framecast.quant.plan import plan_from_records

        tables = {key.rpartition(".")[0] for key in state if key.endswith(".codes")}
        empty_quantized(model, plan_from_records(meta["quant_plan"]), tables, saved_keys=state)
    model.load_state_dict(state)
    return model.to(device).eval()


class _PyfuncModel:
    """What `mlflow.pyfunc.load_model` returns: `.model` is the framecast model; for a frame
    predictor predict(uint8 video array) -> predicted frames."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def predict(self, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        from framecast.models.contract import FramePredictor
        from framecast.predict import predict

        if not isinstance(self.model, FramePredictor):
            raise TypeError(f"pyfunc predict serves frame predictors; this model is a "
                            f"{self.model.family}: use `.model`")
        return predict(self.model, np.asarray(model_input, dtype=np.uint8))[0]


def _load_pyfunc(data_path: str) -> _PyfuncModel:
    """MLflow's pyfunc loader hook (loader_module=framecast.model_io)."""
    return _PyfuncModel(load_model(data_path))


def log_model(model: nn.Module, name: str, *, registered_name: str | None = None,
              extra: dict | None = None):
    """Log to the active MLflow run (and register it when `registered_name`); returns MLflow's
    ModelInfo (`.model_uri`, `.registered_model_version`)."""
    import mlflow

    signature, example = _signature((extra or {}).get("frame_shape"), model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "framecast_model", model, name, extra)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT, loader_module="framecast.model_io", data_path=str(folder),
            registered_model_name=registered_name, pip_requirements=["framecast", "torch"],
            signature=signature, input_example=example)
    return info


def _signature(frame_shape: list[int] | None, model: nn.Module) -> tuple[Any, Any]:
    """A frame predictor's MLflow signature and input example for clips of `frame_shape`
    (T, H, W, C): uint8 video (N, T, H, W, C) in, uint8 predicted frames (N, T - k, H, W, C)
    out, as the pyfunc `predict` (and `mlflow models serve`'s /invocations) takes and gives;
    (None, None) for other models or when the shape is unknown."""
    from framecast.models.contract import FramePredictor

    if frame_shape is None or not isinstance(model, FramePredictor):
        return None, None
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    t, h, w, c = (int(n) for n in frame_shape)
    byte = np.dtype(np.uint8)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(byte, (-1, t, h, w, c))]),  # unnamed: predict gets the array
        outputs=Schema([TensorSpec(byte, (-1, t - model.context_frames, h, w, c))]))
    return signature, np.zeros((1, t, h, w, c), np.uint8)


def resolve_model_uri(ref: str) -> str:
    """A run id, `runs:/...`, `models:/name@alias`, `models:/name/3` or a registered name."""
    if ref.startswith(("runs:/", "models:/")):
        return ref
    if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref):
        return f"runs:/{ref}/{ARTIFACT}"
    return f"models:/{ref}@latest" if "@" not in ref else f"models:/{ref}"


def resolve_version(name: str, alias: str = "") -> str:
    """The registry version of `name@alias`; alias '' or 'latest' means the newest version.
    Raises ValueError naming the model and the store when there is none."""
    import mlflow

    client = mlflow.MlflowClient()
    where = f"in the MLflow registry at {mlflow.get_tracking_uri()}"
    if alias in ("", "latest"):
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ValueError(f"no registered model named {name!r} {where}")
        return str(max(int(v.version) for v in versions))
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"model {name}@{alias} not found {where}: {err.message[:160]}") from None


def source_run_id(ref: str) -> str | None:
    """The MLflow run that logged the model `ref` points at (None if it cannot be told)."""
    import mlflow

    from framecast.tracking import ensure_tracking_uri

    ensure_tracking_uri()
    uri = resolve_model_uri(ref)
    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").split("/")[0]
    body = uri.removeprefix("models:/")
    if body.startswith("m-") and not any(c in body for c in "/@"):  # MLflow 3 logged-model id
        return mlflow.get_logged_model(body).source_run_id
    name, at, alias = body.partition("@")
    if not at:
        name, _, number = name.partition("/")
    else:
        number = resolve_version(name, alias)
    return mlflow.MlflowClient().get_model_version(name, number).run_id


@contextlib.contextmanager
def _downloaded(ref: str) -> Iterator[Path]:
    """The logged model `ref`'s data folder (its META beside the weights), downloaded from
    MLflow into a temporary folder for the block."""
    import os

    import mlflow

    from framecast.tracking import ensure_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file: noise
    ensure_tracking_uri()
    uri = resolve_model_uri(ref)
    if uri.endswith("@latest"):
        name = uri.removeprefix("models:/").removesuffix("@latest")
        uri = f"models:/{name}/{resolve_version(name)}"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        yield next(p.parent for p in local.rglob(META))


def load_logged_model(ref: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Download a logged model from MLflow and load it; returns (model, its meta dict)."""
    with _downloaded(ref) as data:
        return load_model(data, device), read_meta(data)


def logged_meta(ref: str) -> dict[str, Any]:
    """A logged model's meta dict (registry name, family, config, data), without building it.
    Models saved before meta held the family get their registry entry's."""
    from framecast.models import registry

    with _downloaded(ref) as data:
        meta = read_meta(data)
    if "family" not in meta and meta.get("name") in registry.available_models():
        meta["family"] = registry.entry(meta["name"]).model_class.family
    return meta


def load_components(refs: dict[str, str], families: dict[str, str] | None = None
                    ) -> dict[str, nn.Module]:
    """Load the logged models a new model is built around (`Model.component_refs`), by
    constructor argument. A missing or unknown reference, or one of another family than
    `families` (`Model.component_families`) names, raises ConfigError naming it."""
    import mlflow

    from framecast.config import ConfigError
    from framecast.tracking import default_tracking_uri

    out = {}
    for attr, ref in refs.items():
        if not ref:
            raise ConfigError(f"no {attr} given: name the logged {attr} with --model-config "
                              f"{attr}=NAME (a registered name, name@alias, run id or URI)")
        mlflow.set_tracking_uri(default_tracking_uri())
        try:
            out[attr], _ = load_logged_model(ref)
        except (mlflow.exceptions.MlflowException, ValueError, OSError) as err:
            text = getattr(err, "message", str(err)).splitlines()[0][:160]
            raise ConfigError(f"{attr} {ref!r} not found in MLflow ({default_tracking_uri()}): "
                              f"{text}") from None
        want, got = (families or {}).get(attr), getattr(out[attr], "family", None)
        if want and got != want:
            raise ConfigError(f"{attr} {ref!r} is a {got}, not a {want}: name a logged {want} "
                              f"(--model-config {attr}=NAME)")
    return out
