"""The plain-torch training loop, checkpoints and model files (no Ray)."""

import itertools

import numpy as np
import pytest
import torch

from framecast import model_io
from framecast.models import create
from framecast.predict import evaluate, predict
from framecast.train import (
    OptimConfig,
    cached_epochs,
    load_checkpoint,
    lr_at,
    make_optimizer,
    save_checkpoint,
    train_loop,
)
from tests.test_models import moving_square


def batches(seed: int = 0):
    """An endless, deterministic stream of small videos."""
    base = moving_square(batch=4)
    for i in itertools.count():
        yield torch.roll(base, shifts=(seed + i) % 3, dims=3)


def test_lr_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_loop_reports_losses_and_checkpoints_at_the_asked_steps(tmp_path):
    torch.manual_seed(0)
    model = create("vblt", "tiny")
    cfg = OptimConfig(steps=12, batch_size=4, log_every=3, checkpoint_every=5, warmup_steps=2)
    seen = []

    def report(metrics, checkpoint_dir):
        seen.append((int(metrics["step"]), checkpoint_dir is not None))
        if checkpoint_dir:
            assert load_checkpoint(checkpoint_dir, create("vblt", "tiny")) == metrics["step"]

    final = train_loop(model, make_optimizer(model, cfg), batches(), cfg, report)
    assert final == 12
    assert seen == [(3, False), (5, True), (6, False), (9, False), (10, True), (12, True)]


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_never_stopping(tmp_path):
    cfg = OptimConfig(steps=8, batch_size=4, log_every=100, checkpoint_every=4, warmup_steps=2)

    def run(stream, start_dir=None):
        torch.manual_seed(0)
        model = create("vblt", "tiny")
        opt = make_optimizer(model, cfg)
        start = load_checkpoint(start_dir, model, opt) if start_dir else 0

        def report(metrics, ckpt):
            if ckpt:
                save_checkpoint(tmp_path / "ckpt", model, opt, int(metrics["step"]))
        train_loop(model, opt, stream, cfg, report, start_step=start)
        return model

    def dies_after_four():
        yield from itertools.islice(batches(), 4)
        raise RuntimeError("worker died before batch 5")

    straight = run(batches())
    with pytest.raises(RuntimeError, match="worker died before batch 5"):
        run(dies_after_four())
    resumed = run(itertools.islice(batches(), 4, None), start_dir=tmp_path / "ckpt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_saved_model_reloads_with_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = create("vblt", "tiny").eval()
    model_io.save_model(tmp_path / "m", model, "vblt", {"preset": "tiny"})
    again = model_io.load_model(tmp_path / "m")
    video = moving_square()
    with torch.no_grad():
        assert torch.equal(model(video), again(video))
    assert model_io.read_meta(tmp_path / "m")["preset"] == "tiny"


def test_model_files_hold_no_pickled_code(tmp_path):
    model_io.save_model(tmp_path / "m", create("vblt", "tiny"), "vblt")
    state = torch.load(tmp_path / "m" / model_io.WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_predict_and_evaluate_compare_with_copy_last_on_the_same_frames():
    model = create("vblt", "tiny")
    videos = moving_square(batch=3).numpy()
    pred, entropy, ce = predict(model, videos, batch_size=2)
    k = model.context_frames
    assert pred.shape == videos[:, k:].shape and pred.dtype == np.uint8
    assert entropy.shape == pred.shape and ((entropy >= 0) & (entropy <= 8.0001)).all()
    assert 0 < ce < 6.0
    result = evaluate(model, videos)
    assert set(result) == {"model", "copy_last", "cross_entropy", "entropy_bits"}
    assert result["copy_last"]["mse"].shape == (videos.shape[1] - k,)


@pytest.mark.parametrize("ref, uri", [
    ("0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef0123456789abcdef/model"),
    ("vblt-2d", "models:/vblt-2d@latest"),
    ("vblt-2d@candidate", "models:/vblt-2d@candidate"),
    ("models:/vblt-2d/3", "models:/vblt-2d/3"),
])
def test_model_references_resolve_to_mlflow_uris(ref, uri):
    assert model_io.resolve_model_uri(ref) == uri


def _numbered_epochs(rows: int, batch: int, calls: list[int]):
    """A streaming source: every row's value is its index; records which epochs it served."""
    def epoch_batches(epoch: int):
        calls.append(epoch)
        data = torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 3)
        for start in range(0, rows - batch + 1, batch):
            yield data[start:start + batch]
    return epoch_batches


def test_cached_epochs_reshuffle_the_first_epochs_rows_without_streaming_again():
    calls: list[int] = []
    out = list(itertools.islice(cached_epochs(_numbered_epochs(20, 4, calls), batch_size=4,
                                              seed=0, limit_bytes=10**6), 15))
    assert calls == [0]  # epochs 1 and 2 came from memory
    assert all(b.shape == (4, 3) for b in out)
    epochs = [torch.cat(out[i:i + 5])[:, 0] for i in (0, 5, 10)]
    assert all(sorted(e.tolist()) == list(range(20)) for e in epochs)  # every row once per epoch
    assert epochs[1].tolist() != epochs[2].tolist() != list(range(20))  # a new order each time


def test_cached_epochs_stream_every_epoch_when_the_data_is_over_the_limit():
    calls: list[int] = []
    out = list(itertools.islice(cached_epochs(_numbered_epochs(20, 4, calls), batch_size=4,
                                              seed=0, limit_bytes=100), 11))
    assert calls == [0, 1, 2] and torch.equal(out[5], out[0])


def test_cached_epochs_refuse_a_source_with_no_batch():
    with pytest.raises(ValueError, match="no batch"):
        list(cached_epochs(lambda epoch: iter(()), batch_size=4, seed=0, limit_bytes=10**6))


def test_the_objective_trains_a_frame_predictor_on_its_own_inputs_when_asked():
    from framecast.train import Objective

    model = create("vblt", "tiny")
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    torch.manual_seed(1)
    own = Objective(model, own_inputs=0.5)(video)[0]
    torch.manual_seed(1)
    assert own.item() == model.loss(video, own_inputs=0.5)[0].item()
    assert Objective(model)(video)[0].item() == model.loss(video)[0].item()
