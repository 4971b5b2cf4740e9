"""The model contract: a family defined only here trains through the real job path; composite
models save and load as one unit; model overrides are typed and refused before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import toy_models  # noqa: F401  (registers the test tokenizer `toy-patches`)
from rendered import tiny_2d
from torch import nn

from framecast import model_io
from framecast.config import ConfigError
from framecast.models import registry
from framecast.models.contract import Model, TokenGenerator, Tokenizer, categorical_nll
from jobs.train import TrainJobConfig, main, train


# A fourth family, registered here only: the next frame's mean brightness, as a regression.
@dataclass(frozen=True)
class BrightnessConfig:
    hidden: int = 8
    context: int = 2


class BrightnessForecaster(Model):
    family = "brightness_forecaster"
    config_class = BrightnessConfig
    headline = ("mae",)

    def __init__(self, cfg: BrightnessConfig) -> None:
        super().__init__(cfg)
        self.net = nn.Sequential(nn.Linear(cfg.context, cfg.hidden), nn.Tanh(),
                                 nn.Linear(cfg.hidden, 1))

    def _pairs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level = video.float().mean(dim=(2, 3, 4)) / 255.0  # (B, T)
        k = self.cfg.context
        inputs = level.unfold(1, k, 1)[:, :-1]  # (B, T - k, k)
        return self.net(inputs).squeeze(-1), level[:, k:]

    def loss(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        pred, truth = self._pairs(video)
        return F.mse_loss(pred, truth), {"mae": float((pred - truth).abs().mean())}

    @torch.no_grad()
    def evaluate(self, videos: np.ndarray, batch_size: int = 8) -> dict[str, float]:
        pred, truth = self._pairs(torch.from_numpy(videos))
        return {"loss": float(F.mse_loss(pred, truth)), "mae": float((pred - truth).abs().mean())}


registry.register_model("toy-brightness", {"tiny": {}, "wide": {"hidden": 32}})(
    BrightnessForecaster)


# A composite: a generator that holds its tokenizer (tests/toy_models.py: `toy-patches`).
@dataclass(frozen=True)
class TinyGeneratorConfig:
    dim: int = 8


class TinyGenerator(TokenGenerator):
    config_class = TinyGeneratorConfig

    def __init__(self, cfg: TinyGeneratorConfig, tokenizer: Tokenizer) -> None:
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.embed = nn.Embedding(tokenizer.codebook_size, cfg.dim)
        self.head = nn.Linear(cfg.dim, tokenizer.codebook_size)

    def forward(self, tokens):
        return self.head(self.embed(tokens.flatten(1)))  # each token predicts the next

    def loss(self, video):
        tokens = self.tokenizer.encode(video).flatten(1)
        return categorical_nll(self(tokens[:, :-1].reshape(len(tokens), 1, 1, -1)),
                               tokens[:, 1:]), {}

    def evaluate(self, videos, batch_size=8):
        return {"loss": float(self.loss(torch.from_numpy(videos))[0])}

    @torch.no_grad()
    def generate(self, context, future_frames, *, temperature=1.0, top_k=0, seed=0):
        tokens = self.tokenizer.encode(context)
        per_frame = tokens[0, 0].numel()
        flat = tokens.flatten(1)
        for _ in range(future_frames * per_frame):
            flat = torch.cat([flat, self(flat[:, -1:])[:, -1].argmax(-1, keepdim=True)], dim=1)
        grid = flat[:, -future_frames * per_frame:].view(len(flat), future_frames,
                                                         *tokens.shape[2:])
        return self.tokenizer.decode(grid)

    def forward_steps(self, frame_shape, context_frames):
        t, h, w = self.tokenizer.grid(frame_shape)
        return (t - context_frames) * h * w  # one token per step


registry.register_model("toy-generator", {"tiny": {}})(TinyGenerator)


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    return tiny_2d(tmp_path_factory.mktemp("contract") / "tri", num_sequences=16, frames=4,
                   size=16, val_fraction=0.25, test_fraction=0.0)


def all_runs() -> list:
    from framecast import tracking

    client = mlflow.MlflowClient(tracking.default_tracking_uri())
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def test_a_family_defined_in_a_test_trains_through_the_ray_train_job(data, tmp_path):
    """No change to train.py or the jobs: the loop calls the model's own loss, the workers get
    the class by value, the driver evaluates, logs and registers it through the contract."""
    result = train(TrainJobConfig(
        data=str(data), model="toy-brightness", preset="tiny", model_config="hidden=4",
        steps=6, batch_size=2, log_every=2, checkpoint_every=3, lr=1e-2,
        storage=str(tmp_path / "ray"), register="toy-brightness-2d"))
    assert result["step"] == 6
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.data.params["model.hidden"] == "4" and run.data.params["model"] == "toy-brightness"
    assert {"loss", "mae", "final_val_mae", "final_val_loss"} <= set(run.data.metrics)
    model, meta = model_io.load_logged_model("toy-brightness-2d")
    assert isinstance(model, BrightnessForecaster) and model.cfg.hidden == 4
    assert meta["family"] == "brightness_forecaster" and meta["overrides"] == {"hidden": 4}


@pytest.mark.slow  # a second Ray Train fit; the toy family above checks overrides as params
def test_vblt_trains_with_model_overrides_and_logs_them(data, tmp_path):
    code = main(["--data", str(data), "--preset", "tiny", "--steps", "2", "--batch-size", "2",
                 "--model-config", "global_layers=2,patch=1x4x4", "--register", "none",
                 "--storage", str(tmp_path / "ray"), "--name", "overridden"])
    assert code == 0
    [run] = [r for r in all_runs() if r.data.tags.get("framecast.ray_run") == "overridden"]
    assert run.data.params["model.global_layers"] == "2"
    assert run.data.params["model.patch"] == "1x4x4"
    assert run.data.params["model_config"] == "global_layers=2,patch=1x4x4"


@pytest.mark.parametrize("flags, message", [
    (["--model", "gpt5"], "model 'gpt5' is unknown; available:"),
    (["--preset", "huge"], "preset 'huge' of vblt is unknown"),
    (["--model-config", "dimm=12"], "vblt has no field 'dimm'"),
    (["--model-config", "global_layers=two"], "global_layers='two': expected int"),
    (["--model-config", "patch=2x4"], "patch='2x4': expected intxintxint"),
    (["--model-config", "dim=32,heads=2"], "multiple of 6"),
    (["--model-config", "patch=2x5x5"], "patch 2x5x5 does not tile the data's 4x16x16 frames"),
    (["--own-inputs", "1.5"], "own_inputs=1.5 must be in [0, 1)"),
    (["--model", "fsq", "--own-inputs", "0.5"], "--own-inputs is for frame predictors"),
])
def test_bad_models_are_refused_in_one_line_before_any_run(data, flags, message, capsys):
    before = len(all_runs())
    capsys.readouterr()  # MLflow's own log lines if this created the store
    try:
        code = main(["--data", str(data), "--preset", "tiny", *flags])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert len(all_runs()) == before


def test_overrides_are_typed_against_the_config():
    assert registry.parse_overrides("vblt", "patch=1x4x4, byte_skip=false,mlp_ratio=2") == {
        "patch": (1, 4, 4), "byte_skip": False, "mlp_ratio": 2.0}
    assert registry.parse_overrides("vblt", "") == {}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        registry.parse_overrides("vblt", "patch")
    with pytest.raises(ConfigError, match="byte_skip='maybe': expected bool"):
        registry.parse_overrides("vblt", "byte_skip=maybe")


def test_a_model_refuses_data_it_was_not_built_for():
    model = registry.create("vblt", "tiny")  # 1 channel, patch 2x4x4
    model.check_data((8, 16, 16, 1))
    with pytest.raises(ConfigError, match=r"channels=1 \(data: 3\)"):
        model.check_data((8, 16, 16, 3))
    with pytest.raises(ConfigError, match="does not tile"):
        model.check_data((8, 18, 16, 1))


def test_the_loss_is_the_models_own_and_equals_next_frame_cross_entropy():
    torch.manual_seed(0)
    model = registry.create("vblt", "tiny")
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    loss, _ = model.loss(video)
    logits = model(video)
    expected = F.cross_entropy(logits.reshape(-1, 256).float(),
                               video[:, model.context_frames:].long().reshape(-1))
    assert torch.equal(loss, expected)


def test_a_composite_generator_saves_logs_and_loads_as_one_unit(tmp_path):
    tokenizer = registry.create("toy-patches", "tiny")
    generator = registry.build("toy-generator", registry.model_config("toy-generator", "tiny"),
                               tokenizer=tokenizer)
    with torch.no_grad():
        tokenizer.offset.fill_(7.0)
        generator.head.bias.normal_()
    video = torch.randint(0, 256, (1, 2, 8, 8, 1), dtype=torch.uint8)
    expected = generator.generate(video, 1)

    folder = model_io.save_model(tmp_path / "m", generator)
    meta = model_io.read_meta(folder)
    assert meta["components"] == {"tokenizer": {"name": "toy-patches",
                                                "config": {"levels": 4, "patch": 2}}}
    loaded = model_io.load_model(folder)
    assert loaded.tokenizer.offset.item() == 7.0
    assert torch.equal(loaded.generate(video, 1), expected)

    from framecast import tracking
    tracking.use_experiment("contract-test")
    with mlflow.start_run():
        model_io.log_model(generator, "toy-generator", registered_name="toy-gen")
    again, _ = model_io.load_logged_model("toy-gen")
    assert torch.equal(again.generate(video, 1), expected)


def test_the_pipeline_checks_its_model_overrides_against_the_frames_it_will_render():
    from jobs.pipeline import PipelineConfig

    PipelineConfig(model_config="global_layers=2")  # a field that fits: accepted
    with pytest.raises(ConfigError, match="has no field 'global_layerz'"):
        PipelineConfig(model_config="global_layerz=2")
    with pytest.raises(ConfigError, match="patch 1x5x5 does not tile the data's 12x16x16"):
        PipelineConfig(model_config="patch=1x5x5")
    with pytest.raises(ConfigError, match="vblt has no field 'layers'"):
        PipelineConfig(model_config="layers=2")
