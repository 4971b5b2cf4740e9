"""jobs.generate refuses what it cannot do in one line, before anything is logged."""

import mlflow
import pytest
from rendered import tiny_2d

from jobs.generate import main


@pytest.fixture(scope="module")
def clips(ray_local, tmp_path_factory):
    return tiny_2d(tmp_path_factory.mktemp("generate") / "tri", num_sequences=10, frames=4,
                   size=16)


def run_count() -> int:
    from framecast import tracking

    client = mlflow.MlflowClient(tracking.default_tracking_uri())
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids)) if ids else 0


@pytest.mark.parametrize("flags, message", [
    (["--cond-frames", "0"], "--cond-frames 0 must be in 1..3 (the clips have 4 frames)"),
    (["--cond-frames", "4"], "--cond-frames 4 must be in 1..3"),
    (["--model", "no-such-model"], "no registered model named 'no-such-model'"),
    (["--temperature", "-1"], "--temperature -1.0 must be >= 0"),
    # A traceback, an unnamed overflow, and a seed /generate refuses, before:
    (["--temperature", "inf"], "temperature=inf must be a finite number"),
    (["--seed", str(2**64)], f"seed={2**64} must be in 0..{2**64 - 1}"),
    (["--seed", "-1"], "--seed -1 must be >= 0"),
])
def test_bad_generate_input_is_one_line_and_logs_nothing(clips, flags, message, capsys):
    before = run_count()
    capsys.readouterr()
    argv = ["--model", "nbp-2d", "--data", str(clips), "--cond-frames", "2", *flags]
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert run_count() == before


@pytest.mark.slow  # three Ray Train fits: ~2 minutes on 2 cores
def test_tokenizer_then_nbp_then_generation_through_the_jobs(clips, tmp_path, capsys):
    """The user's path: train an FSQ tokenizer, train NBP on its tokens (named by its registry
    name), continue test clips with jobs.generate; refusals on the way."""
    from framecast import model_io
    from jobs.train import main as train_main

    base = ["--data", str(clips), "--preset", "tiny", "--steps", "2", "--batch-size", "2",
            "--checkpoint-every", "2", "--storage", str(tmp_path / "ray")]
    assert train_main(["--model", "fsq", "--register", "fsq-gen-test", *base]) == 0
    capsys.readouterr()
    before = run_count()
    assert train_main(["--model", "nbp", "--model-config", "tokenizer=no-such-tokenizer",
                       *base]) == 2
    assert "tokenizer 'no-such-tokenizer' not found in MLflow" in capsys.readouterr().err
    assert train_main(["--model", "nbp", "--model-config", "tokenizer=fsq-gen-test,block=1x3x3",
                       *base]) == 2
    assert "block 1x3x3 does not tile the token grid" in capsys.readouterr().err
    assert run_count() == before
    assert train_main(["--model", "nbp", "--register", "nbp-gen-test", "--model-config",
                       "tokenizer=fsq-gen-test,block=1x2x2", *base]) == 0
    generator, meta = model_io.load_logged_model("nbp-gen-test")
    assert meta["components"]["tokenizer"]["name"] == "fsq"

    result = main(["--model", "nbp-gen-test", "--data", str(clips), "--cond-frames", "1"])
    assert result == 0
    out = capsys.readouterr().out
    assert "forward steps per clip" in out
    [run] = [r for r in mlflow.search_runs(experiment_names=["framecast"], output_format="list")
             if r.data.tags.get("framecast.job") == "generate"]
    assert run.data.metrics["forward_steps"] == 3 * 4  # 3 frames of 4x4 tokens, blocks of 2x2
    assert {"gen_psnr", "gen_psnr_copy_last", "frames_per_s"} <= set(run.data.metrics)
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id,
                                                                      "generation")]
    assert artifacts == ["generation/truth_generated.gif"]
