"""The V-BLT paper's baselines (ViViT, UNet-3D), the FLOP counter and the "hard" data preset."""

import numpy as np
import pytest
import torch
from torch import nn

from framecast.models import create
from framecast.models.profile import count_flops, model_cost
from framecast.quant.gemm_form import linearize

BASELINES = ["vivit", "unet3d"]


@pytest.mark.parametrize("name", BASELINES)
def test_changing_frame_t_changes_no_prediction_of_frames_up_to_t(name):
    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    k, step, frames = model.context_frames, model.frames_per_step, 8
    video = torch.randint(0, 256, (1, frames, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        base = model(video)  # output j is frame k + j
        for t in range(k, frames):
            changed = video.clone()
            changed[:, t] = 255 - changed[:, t]  # frame t alone
            out = model(changed)
            # Frames are predicted a step at a time: frame t first reaches the next step's.
            first = (t // step + 1) * step
            assert torch.equal(base[:, :first - k], out[:, :first - k]), t  # all up to t
            if first < frames:
                assert not torch.allclose(base[:, first - k:], out[:, first - k:]), t


@pytest.mark.parametrize("name, shape", [
    ("vivit", (2, 8, 16, 24, 3)), ("unet3d", (2, 5, 12, 10, 3)), ("unet3d", (1, 12, 32, 32, 1))])
def test_output_shape_is_one_distribution_per_predicted_pixel_byte(name, shape):
    b, t, h, w, c = shape
    model = create(name, "tiny", channels=c)
    logits = model(torch.randint(0, 256, shape, dtype=torch.uint8))
    assert logits.shape == (b, t - model.context_frames, h, w, c, 256)


def test_vivit_refuses_frames_its_tubelet_does_not_tile():
    from framecast.config import ConfigError
    from framecast.models import model_config

    with pytest.raises(ValueError, match="divisible by the tubelet"):
        create("vivit", "tiny")(torch.zeros(1, 5, 16, 16, 1, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="does not tile"):
        model_config("vivit", "tiny", frame_shape=(12, 18, 16, 1))


def test_flop_counter_matches_the_analytic_count_of_a_linear_and_a_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x = torch.zeros(2, 3, 10, 10)
    conv = 2 * 2 * 8 * 8 * 8 * (3 * 3 * 3)  # 2 FLOPs per multiply-add: batch, out pixels, kernel
    linear = 2 * 2 * (8 * 8 * 8) * 10
    assert count_flops(model, x) == conv + linear


def test_model_cost_counts_a_non_square_frame():
    model = create("unet3d", "tiny")
    square, wide = model_cost(model, 4, 16), model_cost(model, 4, 16, width=32)
    assert wide["gflops"] == pytest.approx(2 * square["gflops"], rel=1e-6)
    assert square["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", BASELINES)
def test_quantization_linearizes_the_patch_convolutions_and_keeps_outputs(name):
    """ViViT's tubelet embedding and un-embedding, UNet-3D's up-convolutions become exact
    linears (int8 GEMMs later); UNet-3D's 3x3x3 convolutions stay float convolutions."""
    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    video = torch.randint(0, 256, (1, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        before = model(video)
        replaced = linearize(model)
        after = model(video)
    assert replaced
    assert torch.allclose(before, after, atol=1e-4)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    assert bool(convs) == (name == "unet3d")


def test_the_hard_preset_expands_to_flags_that_the_command_line_overrides():
    from framecast.config import parse_args
    from jobs.render import RenderJobConfig

    argv = ["--kind", "3d", "--preset", "hard", "--spin-range-3d", "1", "2"]
    config = parse_args(RenderJobConfig, argv)
    assert config.fill_frame and config.spin_range_3d == (1.0, 2.0)
    assert config.spin_range_2d == (10.0, 25.0) and config.preset == "hard"
    assert not parse_args(RenderJobConfig, []).fill_frame  # the old defaults stay the defaults
    # a flag set to its default beside the preset still wins over the preset
    assert not parse_args(RenderJobConfig, ["--preset=hard", "--fill-frame", "false"]).fill_frame


def test_the_hard_preset_in_a_config_file_applies_under_its_keys_and_the_flags(tmp_path, capsys):
    import pytest

    from framecast.config import parse_args
    from jobs.render import RenderJobConfig

    path = tmp_path / "render.yaml"
    path.write_text("preset: hard\nspin_range_2d: [1, 2]\n")
    config = parse_args(RenderJobConfig, ["--config", str(path), "--spin-range-3d", "3", "4"])
    assert config.fill_frame and config.spin_range_2d == (1.0, 2.0)
    assert config.spin_range_3d == (3.0, 4.0)
    with pytest.raises(SystemExit) as stop:
        parse_args(RenderJobConfig, ["--preset", "easy"], prog="python -m jobs.render")
    assert stop.value.code == 2
    assert "data preset 'easy' is unknown; available: hard" in capsys.readouterr().err


def test_fill_frame_makes_every_object_as_large_as_the_largest():
    from framecast.render.scene import SequenceRenderer
    from framecast.render.spec import RenderConfig

    lit = {}
    for fill in (False, True):
        config = RenderConfig(kind="3d", num_sequences=4, frames=2, size=32, fill_frame=fill)
        renderer = SequenceRenderer(config)
        try:
            lit[fill] = [float((renderer.render(i)[0] > 0).mean()) for i in range(4)]
        finally:
            renderer.close()
    assert all(b >= a for a, b in zip(lit[False], lit[True], strict=True))
    assert np.mean(lit[True]) > 1.3 * np.mean(lit[False])


@pytest.mark.parametrize("name", BASELINES)
def test_serve_rollout_step_predicts_what_the_full_forward_predicts(name):
    """jobs.serve's step: placeholder frames after the context; causality makes them harmless."""
    from serve.inference import predict_steps

    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    step = model.frames_per_step
    video = np.random.default_rng(0).integers(0, 256, (4 + step, 16, 16, 1), dtype=np.uint8)
    (got,) = predict_steps(model, [video[:4]])
    with torch.no_grad():
        logits = model(torch.from_numpy(video[None]))[:, -step:]
    assert np.array_equal(got.frames, model.decode(logits)[0].numpy())


@pytest.mark.slow  # two quantize jobs (~20 s each on 2 cores)
@pytest.mark.parametrize("name", BASELINES)
def test_the_quantize_job_takes_a_baseline_with_no_code_of_its_own(name, tmp_path):
    """Its linears become int8 GEMMs; UNet-3D's 3x3x3 convolutions stay float convolutions."""
    import mlflow
    from test_data import write_dataset

    from framecast import model_io, tracking
    from framecast.quant.int8 import Int8Linear
    from framecast.render.spec import RenderConfig
    from jobs.quantize import QuantizeJobConfig, quantize

    data = tmp_path / "data"
    write_dataset(data, RenderConfig(kind="2d", num_sequences=20, frames=4, size=16,
                                     val_fraction=0.2, test_fraction=0.2))
    torch.manual_seed(0)
    tracking.use_experiment("test-baselines")
    with mlflow.start_run():
        model_io.log_model(create(name, "tiny"), name, registered_name=f"{name}-q",
                           extra={"frame_shape": [4, 16, 16, 1], "preset": "tiny"})
    out = quantize(QuantizeJobConfig(model=f"{name}-q", data=str(data), batch_size=4,
                                     register="none", eval_sequences=4, stage_steps=1,
                                     final_steps=1, calib_batches=1, latency_repeats=1,
                                     latency_span_ms=0,
                                     experiment="test-baselines"))
    quantized = out["model"]
    assert any(isinstance(m, Int8Linear) for m in quantized.modules())
    convs = [m for m in quantized.modules() if isinstance(m, nn.Conv3d)]
    assert bool(convs) == (name == "unet3d")
    assert np.isfinite(out["metrics"]["psnr_drop_db"])
