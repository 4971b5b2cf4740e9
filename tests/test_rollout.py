"""The rollout protocol (`predict.rollout`, `comparison`'s table 2): every frame predictor continues
clips from the same context on its own predictions, never reading a frame past the context."""

import numpy as np
import pytest
import torch

from framecast import comparison, metrics
from framecast.models import available_models, create
from framecast.predict import rollout

FRAME_PREDICTORS = available_models("frame_predictor")


def _clips(n: int = 2, frames: int = 8, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 1),
                                                dtype=np.uint8)


def _next_step(model, known: np.ndarray) -> np.ndarray:
    """What one forward step predicts after `known` frames (argmax), by hand."""
    step = model.frames_per_step
    video = np.concatenate([known, np.zeros_like(known[:, :step])], axis=1)
    with torch.no_grad():
        logits = model(torch.from_numpy(video))[:, -step:]
    return model.decode(logits, "argmax").numpy()


def test_every_frame_predictor_is_covered():
    assert {"vblt", "vivit", "unet3d"} <= set(FRAME_PREDICTORS)


@pytest.mark.parametrize("name", FRAME_PREDICTORS)
def test_rollout_feeds_back_its_own_predictions(name):
    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    videos = _clips()
    context, step = 2 * model.frames_per_step, model.frames_per_step
    pred, entropy = rollout(model, videos, context, decode="argmax")
    assert pred.shape == (2, 8 - context, 16, 16, 1) and pred.dtype == np.uint8
    assert entropy.shape == pred.shape and np.isfinite(entropy).all()
    first = _next_step(model, videos[:, :context])
    assert np.array_equal(pred[:, :step], first)
    # The second step reads the first step's predictions, not the true frames...
    fed_back = _next_step(model, np.concatenate([videos[:, :context], first], axis=1))
    assert np.array_equal(pred[:, step:2 * step], fed_back)
    # ...and those predictions matter: the truth in their place gives other frames.
    truth_fed = _next_step(model, videos[:, :context + step])
    assert not np.array_equal(pred[:, step:2 * step], truth_fed)


@pytest.mark.parametrize("name", FRAME_PREDICTORS)
def test_rollout_never_reads_a_frame_past_the_context(name):
    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    videos = _clips()
    context = 2 * model.frames_per_step
    changed = videos.copy()
    changed[:, context:] = 255 - changed[:, context:]
    a, ea = rollout(model, videos, context, decode="argmax")
    b, eb = rollout(model, changed, context, decode="argmax")
    assert np.array_equal(a, b) and np.array_equal(ea, eb)


def test_a_slice_model_rolls_out_in_its_own_steps_and_a_context_off_its_grid_keeps_whole_slices():
    torch.manual_seed(0)
    model = create("vblt", "tiny").eval()  # 2-frame slices
    videos = _clips()
    pred, _ = rollout(model, videos, 3, decode="argmax")  # reads frames 1..2, predicts 3..4, ...
    assert pred.shape[1] == 5
    assert np.array_equal(pred[:, :2], _next_step(model, videos[:, 1:3]))


def test_rollout_refuses_a_context_the_model_or_the_clip_cannot_give():
    model = create("vblt", "tiny")
    with pytest.raises(ValueError, match="expected 2..7"):
        rollout(model, _clips(), 1)
    with pytest.raises(ValueError, match="expected 2..7"):
        rollout(model, _clips(), 8)


def test_copy_last_holds_the_last_context_frame():
    videos = _clips(frames=6)
    held = metrics.hold_last_frame(videos, 3)
    assert held.shape == (2, 3, 16, 16, 1)
    assert all(np.array_equal(held[:, i], videos[:, 2]) for i in range(3))
    per_frame = comparison.hold_last_metrics(videos, 3)
    assert per_frame["psnr"].shape == (3,)


def test_rollout_rows_average_the_frames_ahead_and_the_horizon_rows_keep_them():
    per_frame = {"mse": np.array([0.1, 0.3]), "psnr": np.array([20.0, 10.0]),
                 "ssim": np.array([0.8, 0.4])}
    copy = {"mse": np.array([0.2, 0.2]), "psnr": np.array([15.0, 15.0]),
            "ssim": np.array([0.5, 0.5])}
    rows = comparison.rollout_rows("2d", {"vblt": per_frame}, copy, 4, {"vblt": 4})
    assert [r["model"] for r in rows] == ["copy-last", "vblt"]
    vblt = rows[1]
    assert vblt["PSNR"] == 15.0 and vblt["PSNR +1"] == 20.0 and vblt["PSNR +2"] == 10.0
    assert vblt["frames/step"] == 4 and vblt["context"] == 4 and vblt["paper PSNR"] == 32.3
    horizon = comparison.horizon_rows("2d", {"vblt": per_frame}, copy)
    assert horizon[1] == {"data": "2d", "model": "vblt", "+1": 20.0, "+2": 10.0}
    assert comparison.horizon_chart(horizon)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_decoding_can_be_chosen_by_val_rollouts():
    from framecast.predict import DECODES, adopt_best_decode

    torch.manual_seed(0)
    model = create("unet3d", "tiny").eval()
    videos = _clips(frames=6)
    best, psnr = adopt_best_decode(model, videos, context=3)
    for d in DECODES:
        pred, _ = rollout(model, videos, 3, decode=d)
        assert psnr[d] == pytest.approx(float(metrics.psnr_per_frame(pred, videos[:, 3:]).mean()))
    assert model.cfg.decode == best == max(DECODES, key=lambda d: (psnr[d], -DECODES.index(d)))
