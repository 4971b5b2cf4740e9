"""Inputs the jobs refuse at once, in one line, where Ray or a replica would otherwise wait
without a word, fail a minute later or deep inside a constructor."""

import socket

import mlflow
import pytest
import torch
from rendered import tiny_2d

from framecast import model_io, tracking
from framecast.cluster import check_gpus
from framecast.config import ConfigError
from framecast.models import create
from jobs.serve import check_host, check_models, port_is_free
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


def test_a_port_is_busy_while_a_server_listens_and_free_once_it_closed():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Serve's proxy binds
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()
    server.close()  # closed first, the server's end waits in TIME_WAIT: a restart right after
    client.close()
    assert port_is_free("127.0.0.1", port)  # as it is to a proxy that binds it again
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_relative_data_folder_reaches_ray_train_workers_absolute(tmp_path, monkeypatch):
    """Ray Train workers run in a working directory of their own: `jobs.train --data
    data/2d-demo-s0` (as the docs write it) failed in the workers, "does not exist", after
    the MLflow run had started. The jobs now make --data absolute as they parse it."""
    from jobs.compare import CompareConfig

    monkeypatch.chdir(tmp_path)
    assert TrainJobConfig(data="data/tri").data == str(tmp_path / "data" / "tri")
    both = CompareConfig(data="data/2d,data/3d/")
    assert both.data_dirs == [str(tmp_path / "data" / "2d"), str(tmp_path / "data" / "3d")]
    with pytest.raises(ConfigError, match="two different folders"):
        CompareConfig(data="data/2d,./data/2d")  # one folder, written two ways


@pytest.mark.parametrize(("check", "value"), [
    ("alias", "latest"), ("alias", "Latest"), ("alias", "v3"), ("alias", "bad alias!"),
    ("alias", ""), ("name", "a/b"), ("name", "x@candidate"), ("name", "a:b"), ("name", " "),
    ("name", "it's")])
def test_names_and_aliases_mlflow_or_the_jobs_cannot_use_are_refused(check, value):
    """`jobs.quantize --alias latest` (or --register a/b) failed with a traceback after all its
    work, leaving a READY version of a FAILED run that @latest then served."""
    from framecast.tracking import check_alias, check_registered_name

    with pytest.raises(ConfigError, match="--alias" if check == "alias" else "--register"):
        (check_alias if check == "alias" else check_registered_name)(value)
    check_alias("champion-2_b")
    check_registered_name("vblt-2d-int8")


def test_a_float_and_a_quantized_model_never_share_a_registered_name(logged, tmp_path):
    """`jobs.quantize --register vblt-2d` (the fp32 model's own name) was accepted: its int8
    version became vblt-2d@latest, and later quantize, tune and evaluate runs broke on it."""
    from framecast.tracking import check_register_precision

    with pytest.raises(ConfigError, match="--register checks-vblt: its versions are float"):
        check_register_precision("checks-vblt", "w8a8")
    check_register_precision("checks-vblt", "fp32")
    check_register_precision("checks-nothing-yet", "w8a8")
    with mlflow.start_run():
        info = model_io.log_model(create("vblt", "tiny"), "vblt", registered_name="checks-int8")
    mlflow.MlflowClient().set_model_version_tag("checks-int8", info.registered_model_version,
                                                "precision", "w8a8")
    check_register_precision("checks-int8", "w8a8")
    data = tiny_2d(tmp_path / "tri", num_sequences=12, frames=4, size=16)
    from jobs.train import train

    with pytest.raises(ConfigError, match="--register checks-int8: its versions are W8A8"):
        train(TrainJobConfig(data=str(data), preset="tiny", batch_size=2,
                             register="checks-int8"))


def test_resuming_a_named_run_with_another_model_is_refused_untouched(tmp_path):
    """`jobs.train --name X` with another model config resumed X's run, failed loading its
    checkpoint (state_dict mismatch, a traceback) and turned the FINISHED run FAILED."""
    from jobs.train import train

    data = tiny_2d(tmp_path / "tri", num_sequences=12, frames=4, size=16)
    config = TrainJobConfig(data=str(data), preset="tiny", batch_size=2, name="resume-other",
                            experiment="test-job-checks", register="none")
    params = {k: str(v) for k, v in plan(config).params.items() if k.startswith("model")}
    tracking.use_experiment("test-job-checks")
    with mlflow.start_run() as run:
        mlflow.set_tag(tracking.RAY_RUN_TAG, "resume-other")
        mlflow.log_params({**params, "model.dim": "999"})
    with pytest.raises(ConfigError, match=r"--name resume-other resumes MLflow run \w+, which "
                                          r"trains model.dim=999, not 24"):
        train(config)
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


def test_a_model_trained_on_the_other_kind_of_data_is_noted(tmp_path, capsys):
    """A 2D model on 3D data of the same frame shape ran without a word (review: M4)."""
    from framecast import data as fdata
    from jobs.common import note_other_data_kind

    data = tiny_2d(tmp_path / "tri", num_sequences=6, frames=4, size=16)
    manifest = fdata.read_manifest(data)
    note_other_data_kind("evaluate", "vblt-3d", {"data_kind": "3d"}, manifest)
    assert capsys.readouterr().out == ("evaluate: note: vblt-3d was trained on 3d data; this "
                                       "data is 2d\n")
    for meta in ({"data": str(data)}, {"data": str(tmp_path / "gone")}, {}):
        note_other_data_kind("evaluate", "m", meta, manifest)  # same kind, or not known
    assert capsys.readouterr().out == ""
