"""Logged frame predictors carry an MLflow signature and input example: the MLflow UI shows
what a model takes, and its pyfunc (what `mlflow models serve` answers /invocations with)
checks its input against them."""

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from framecast import model_io, tracking
from framecast.models import create


def test_a_logged_frame_predictor_states_its_uint8_video_in_and_frames_out():
    torch.manual_seed(0)
    model = create("vblt", "tiny")  # patch 2x4x4: the first 2 frames are context
    tracking.use_experiment("test-signature")
    with mlflow.start_run():
        info = model_io.log_model(model, "vblt", extra={"frame_shape": [8, 16, 16, 1]})
    logged = mlflow.models.get_model_info(info.model_uri)
    [video] = logged.signature.inputs.inputs
    [frames] = logged.signature.outputs.inputs
    assert (video.type, video.shape) == (np.dtype(np.uint8), (-1, 8, 16, 16, 1))
    assert (frames.type, frames.shape) == (np.dtype(np.uint8), (-1, 6, 16, 16, 1))
    assert logged.saved_input_example_info is not None

    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    clips = np.random.default_rng(0).integers(0, 256, (2, 8, 16, 16, 1), dtype=np.uint8)
    out = pyfunc.predict(clips)
    assert out.dtype == np.uint8 and out.shape == (2, 6, 16, 16, 1)
    with pytest.raises(MlflowException):  # the wrong frame size, refused by the signature
        pyfunc.predict(clips[:, :, :8])
