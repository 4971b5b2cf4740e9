"""Inputs the jobs refuse at once, in one line, where Ray or a replica would otherwise wait
without a word, fail a minute later or deep inside a constructor."""

import mlflow
import pytest
import torch
from rendered import tiny_2d

from framecast import model_io, tracking
from framecast.cluster import check_gpus
from framecast.config import ConfigError
from framecast.models import create
from jobs.serve import check_host, check_models
from jobs.train import TrainJobConfig, plan


@pytest.fixture(scope="module")
def logged():
    """A tiny V-BLT (a frame predictor) and a tiny FSQ (a tokenizer), registered."""
    torch.manual_seed(0)
    tracking.use_experiment("test-job-checks")
    with mlflow.start_run():
        model_io.log_model(create("vblt", "tiny"), "vblt", registered_name="checks-vblt",
                           extra={"frame_shape": [4, 16, 16, 1]})
        model_io.log_model(create("fsq", "tiny"), "fsq", registered_name="checks-fsq")
    return "checks-vblt", "checks-fsq"


def test_a_frame_predictor_named_as_a_generator_s_tokenizer_is_refused(logged, tmp_path):
    data = tiny_2d(tmp_path / "tri", num_sequences=12, frames=4, size=16)
    config = TrainJobConfig(data=str(data), model="nbp", preset="tiny", batch_size=2,
                            model_config=f"tokenizer={logged[0]}")
    with pytest.raises(ConfigError, match="tokenizer 'checks-vblt' is a frame_predictor, not a "
                                          "tokenizer"):
        plan(config)


def test_serving_a_tokenizer_is_refused_before_anything_is_deployed(logged):
    assert check_models([(logged[0], "latest")]) == {logged[0]: "1"}
    with pytest.raises(ConfigError, match="checks-fsq@latest .v1. is a tokenizer: jobs.serve "
                                          "serves frame predictors"):
        check_models([(logged[0], "latest"), (logged[1], "latest")])


def test_data_with_nothing_to_evaluate_on_is_refused_before_training(tmp_path):
    data = tiny_2d(tmp_path / "three", num_sequences=3, frames=4, size=16)  # 3, 0, 0
    with pytest.raises(ConfigError, match="has no val or test sequences"):
        plan(TrainJobConfig(data=str(data), preset="tiny", batch_size=1))


def test_gpus_the_local_ray_lacks_are_refused_and_a_cluster_s_are_waited_for_aloud(
        ray_local, monkeypatch, capsys):
    import ray

    if ray.cluster_resources().get("GPU", 0) >= 64:
        pytest.skip("a machine with 64 GPUs")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="--use-gpu needs 64 GPU.s. and this machine's Ray"):
        check_gpus(64)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # joined: an autoscaler may add them
    check_gpus(64)
    assert "the run needs 64; it waits until nodes with GPUs join" in capsys.readouterr().out


def test_a_host_this_machine_cannot_bind_is_named_as_such():
    check_host("127.0.0.1")
    with pytest.raises(ConfigError, match="--host 192.0.2.1: cannot bind it here"):
        check_host("192.0.2.1")  # TEST-NET-1: never one of this machine's addresses
