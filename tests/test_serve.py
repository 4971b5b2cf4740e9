"""Ray Serve over real HTTP on a local Ray: every route, every kind of bad input (a 4xx JSON error,
the replica alive afterwards), and answers equal to calling the model directly."""

import base64
import io
import os
import pickle
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from framecast import model_io, tracking
from framecast.distribution import decode_bytes
from framecast.metrics import entropy_bits
from framecast.models import create
from serve import codec
from serve.app import AppArgs, ModelSpec, build_app
from serve.codec import ENTROPY_PNG_BITS, decode_png, encode_png, entropy_to_png_bytes

REPO = Path(__file__).resolve().parents[1]
NAME = "t-serve"
FRAME_SHAPE = [8, 16, 16, 1]  # tiny: patch (2, 4, 4): 2 frames per step, context up to 8-2 = 6
BODY_LIMIT = 64 * 1024
MAX_FUTURE = 8


@pytest.fixture(scope="module")
def registered():
    """A tiny V-BLT registered as NAME@candidate; (the model as loaded back, its version)."""
    torch.manual_seed(0)
    tracking.use_experiment("test-serve")
    with mlflow.start_run():
        info = model_io.log_model(create("vblt", "tiny"), "vblt", registered_name=NAME,
                                  extra={"frame_shape": FRAME_SHAPE, "preset": "tiny"})
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "candidate", version)
    model, _ = model_io.load_logged_model(f"models:/{NAME}/{version}")
    return model.eval(), version


@pytest.fixture(scope="module")
def served(ray_local, registered):
    """The app serving NAME@candidate on a free 127.0.0.1 port; Serve is shut down after.
    Yields (base URL, the model as loaded from the registry, its version)."""
    from ray import serve

    from jobs.serve import free_port

    model, version = registered
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # fp32 pinned: the answers are compared byte for byte with the model called directly
    # (`precision: auto` may keep bf16 where it is native and faster).
    args = AppArgs(models=[ModelSpec(name=NAME, alias="candidate", torch_threads=1,
                                     precision="fp32")],
                   max_body_mb=BODY_LIMIT / 2**20, max_future_frames=MAX_FUTURE,
                   ingress_cpus=0.1)
    try:
        serve.run(build_app(args), name="framecast-test", route_prefix="/")
        yield f"http://127.0.0.1:{port}", model, version
    finally:
        serve.shutdown()


def context(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def png_body(frames: np.ndarray, **fields) -> dict:
    return {"frames": [encode_png(f) for f in frames], **fields}


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_of(array: np.ndarray, mode: str) -> str:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return b64(out.getvalue())


@torch.no_grad()
def direct_step(model, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model called directly: placeholders appended, the last step's logits decoded. One torch
    thread, as in the replica (torch_threads=1), so the float sums run in the same order."""
    step = model.frames_per_step
    video = np.concatenate([frames, np.zeros((step, *frames.shape[1:]), np.uint8)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logits = model(torch.from_numpy(video)[None])[:, -step:]
    finally:
        torch.set_num_threads(threads)
    return decode_bytes(logits)[0].numpy(), entropy_bits(logits)[0].numpy()


def test_a_batch_of_mixed_context_lengths_answers_each_as_if_alone(registered):
    """The batcher stacks equal shapes only; each request gets its own next frames."""
    from serve.inference import predict_steps

    model = registered[0]
    contexts = [context(4, seed=5), context(2, seed=6), context(4, seed=7)]
    steps = predict_steps(model, contexts)
    for frames, step in zip(contexts, steps, strict=True):
        want, entropy = direct_step(model, frames)
        assert step.frames.shape == want.shape == (2, 16, 16, 1)
        # A batch of 2 sums floats in another order than a batch of 1: a byte may round apart.
        assert np.abs(step.frames.astype(int) - want).max() <= 1
        np.testing.assert_allclose(step.entropy, entropy, atol=1e-4)


def test_healthz_and_model_listing_say_what_is_deployed(served):
    url, model, version = served
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok",
                                                                 "models": [NAME]}
    listed = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    assert len(listed) == 1
    entry = listed[0]
    assert (entry["name"], entry["alias"], entry["version"]) == (NAME, "candidate", version)
    assert (entry["family"], entry["architecture"], entry["precision"], entry["frame_shape"]) == (
        "frame_predictor", "vblt", "fp32", FRAME_SHAPE)
    assert entry["input"] == {"height": 16, "width": 16, "channels": 1, "frames_per_step": 2,
                              "min_context_frames": 2, "max_context_frames": 6,
                              "max_future_frames": MAX_FUTURE}
    assert requests.get(f"{url}/v1/models/{NAME}", timeout=30).json() == entry
    # glibc keeps freed memory for the next batch, the request thread included (framecast.heap)
    assert entry["heap"] == {"freed_memory_kept": True, "from_process_start": True}


def test_openapi_docs_describe_every_route_and_both_body_formats(served):
    url = served[0]
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert set(spec["paths"]) == {"/healthz", "/v1/models", "/v1/models/{name}",
                                  "/v1/models/{name}/predict", "/v1/models/{name}/rollout",
                                  "/v1/models/{name}/generate"}
    body = spec["paths"]["/v1/models/{name}/rollout"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-npy"} <= set(body)
    assert "future_frames" in body["application/json"]["schema"]["properties"]
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200
    # Constraints a client generator can use: PNG frames as base64 bytes, at least one, a
    # positive future; every error response names its code from a closed set.
    props = body["application/json"]["schema"]["properties"]
    assert props["frames"]["minItems"] == 1
    assert props["frames"]["items"]["format"] == "byte"
    assert props["frames"]["items"]["contentMediaType"] == "image/png"
    assert props["future_frames"]["exclusiveMinimum"] == 0
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["error"]["enum"] == list(codec.ERROR_CODES)
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422", "503"} <= set(predict)
    info = schemas["ModelInfo"]["properties"]
    assert set(info["family"]["enum"]) == {"frame_predictor", "token_generator"}
    assert set(info["compute"]["enum"]) == {"fp32", "bf16"}


def test_every_error_code_the_service_raises_is_in_the_documented_enum():
    import ast

    raised = set()
    for path in (REPO / "serve").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") in
                    ("RequestError", "_error") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)):
                raised.add(node.args[1].value)
    assert raised and raised <= set(codec.ERROR_CODES), raised - set(codec.ERROR_CODES)


def test_png_predict_equals_calling_the_model_directly(served):
    url, model, _ = served
    frames = context(4)
    response = requests.post(f"{url}/v1/models/{NAME}/predict", json=png_body(frames),
                             timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    want, entropy = direct_step(model, frames)
    got = np.stack([decode_png(f) for f in body["frames"]])
    assert got.dtype == np.uint8 and got.tobytes() == want.tobytes()
    got_entropy = np.stack([decode_png(f) for f in body["entropy"]])
    # One PNG level is 8/255 bits; a float sum in another order may land on the other side of .5.
    assert np.abs(got_entropy.astype(int) - entropy_to_png_bytes(entropy)).max() <= 1
    assert body["entropy_png_bits"] == pytest.approx(ENTROPY_PNG_BITS)
    assert body["mean_entropy_bits"] == pytest.approx(entropy.mean(axis=(1, 2, 3)), abs=1e-4)
    assert (body["model"], body["precision"], body["context_frames"]) == (NAME, "fp32", 4)
    assert set(body["timing_ms"]) == {"read", "decode", "model_call", "transport", "queue",
                                      "inference", "encode", "total"}
    assert body["batch_sizes"] == [1]
    assert "total;dur=" in response.headers["Server-Timing"]


def test_npy_predict_equals_calling_the_model_directly(served):
    url, model, _ = served
    frames = context(6, seed=1)
    for upload in (frames, frames[..., 0]):  # (T, H, W) is accepted for one-channel models
        response = requests.post(f"{url}/v1/models/{NAME}/predict", data=npy_bytes(upload),
                                 headers={"Content-Type": "application/x-npy"}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/x-npz"
        answer = np.load(io.BytesIO(response.content), allow_pickle=False)
        want, entropy = direct_step(model, frames)
        assert answer["frames"].tobytes() == want.tobytes()
        np.testing.assert_allclose(answer["entropy"], entropy, atol=1e-5)
        assert response.headers["X-Framecast-Model"] == NAME


def test_rollout_feeds_each_prediction_back_as_context(served):
    url, model, _ = served
    frames = context(4, seed=2)
    response = requests.post(f"{url}/v1/models/{NAME}/rollout",
                             json=png_body(frames, future_frames=5), timeout=60)
    assert response.status_code == 200, response.text
    got = np.stack([decode_png(f) for f in response.json()["frames"]])
    # By hand: 3 steps of 2 frames, the context window keeping the newest 6 frames.
    history, preds = frames, []
    for _ in range(3):
        window = history[-6:]
        step, _ = direct_step(model, window)
        preds.append(step)
        history = np.concatenate([window, step])
    assert got.tobytes() == np.concatenate(preds)[:5].tobytes()
    assert len(response.json()["batch_sizes"]) == 3
    response = requests.post(f"{url}/v1/models/{NAME}/rollout?future_frames=3",
                             data=npy_bytes(frames), timeout=60,
                             headers={"Content-Type": "application/x-npy"})
    assert response.status_code == 200, response.text
    answer = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert answer["frames"].tobytes() == np.concatenate(preds)[:3].tobytes()


class Payload:
    """Unpickling this creates a folder: the proof a server unpickled a request."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def bad_requests(tmp_marker: str) -> dict[str, tuple]:
    """name -> (route, request kwargs, expected status, expected error code)."""
    good = [encode_png(f) for f in context(2)]
    predict, rollout = f"/v1/models/{NAME}/predict", f"/v1/models/{NAME}/rollout"
    npy = {"Content-Type": "application/x-npy"}
    evil = np.empty(2, dtype=object)
    evil[0] = Payload(tmp_marker)
    return {
        "bad json": (predict, {"data": b'{"frames": [', "headers": {
            "Content-Type": "application/json"}}, 400, "bad_json"),
        "json nested too deeply": (predict, {"data": b"[" * 50_000, "headers": {
            "Content-Type": "application/json"}}, 400, "bad_json"),
        "json not an object": (predict, {"json": [1, 2]}, 422, "invalid_field"),
        "frames not a list": (predict, {"json": {"frames": "abc"}}, 422, "invalid_field"),
        "frame not a string": (predict, {"json": {"frames": [1, 2]}}, 422, "invalid_field"),
        "unknown field": (predict, {"json": {"frames": good, "seed": 1}}, 422, "invalid_field"),
        "no frames": (predict, {"json": {"frames": []}}, 422, "invalid_field"),
        "future_frames a string": (rollout, {"json": {"frames": good, "future_frames": "3"}},
                                   422, "invalid_field"),
        "future_frames zero": (rollout, {"json": {"frames": good, "future_frames": 0}},
                               422, "invalid_field"),
        "future_frames missing": (rollout, {"json": {"frames": good}}, 422, "invalid_field"),
        "too many future frames": (rollout, {"json": {"frames": good, "future_frames":
                                                      MAX_FUTURE + 1}},
                                   422, "too_many_future_frames"),
        "bad base64": (predict, {"json": {"frames": [good[0], "not base64!"]}}, 400,
                       "bad_base64"),
        "not a png": (predict, {"json": {"frames": [good[0], b64(b"GIF89a" + bytes(40))]}},
                      400, "not_png"),
        "damaged png": (predict, {"json": {"frames": [good[0], b64(
            base64.b64decode(good[1])[:40])]}}, 400, "bad_png"),
        "wrong frame size": (predict, {"json": {"frames": [
            png_of(np.zeros((8, 8), np.uint8), "L")] * 2}}, 422, "wrong_frame_size"),
        "wrong channels": (predict, {"json": {"frames": [
            png_of(np.zeros((16, 16, 3), np.uint8), "RGB")] * 2}}, 422, "wrong_png_mode"),
        "odd frame count": (predict, {"json": {"frames": good + good[:1]}}, 422,
                            "bad_frame_count"),
        "too many frames": (predict, {"json": {"frames": good * 4}}, 422, "too_many_frames"),
        "body over the limit": (predict, {"json": {"frames": ["A" * BODY_LIMIT] * 2}}, 413,
                                "body_too_large"),
        "body over the limit, chunked": (predict, {"data": iter([b"x" * 16384] * 8),
                                                   "headers": npy}, 413, "body_too_large"),
        "unknown model": ("/v1/models/nope/predict", {"json": {"frames": good}}, 404,
                          "unknown_model"),
        "unsupported content type": (predict, {"data": b"hello", "headers": {
            "Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        "npy of pickled objects": (predict, {"data": npy_bytes(evil, allow_pickle=True),
                                             "headers": npy}, 422, "wrong_dtype"),
        "npy of floats": (predict, {"data": npy_bytes(np.zeros((2, 16, 16, 1), np.float32)),
                                    "headers": npy}, 422, "wrong_dtype"),
        "npy garbage": (predict, {"data": b"\x93NUMPY garbage", "headers": npy}, 400,
                        "bad_npy"),
        "npy not npy": (predict, {"data": pickle.dumps([1, 2]), "headers": npy}, 400,
                        "bad_npy"),
        "npy truncated": (predict, {"data": npy_bytes(context(2))[:-10], "headers": npy}, 400,
                          "bad_npy"),
        "npy wrong frame size": (predict, {"data": npy_bytes(np.zeros((2, 8, 8, 1), np.uint8)),
                                           "headers": npy}, 422, "wrong_frame_size"),
        "npy too many frames": (predict, {"data": npy_bytes(context(8)), "headers": npy}, 422,
                                "too_many_frames"),
        "npy rollout without future_frames": (rollout, {"data": npy_bytes(context(2)),
                                                        "headers": npy}, 422, "invalid_field"),
        "future_frames not a number": (rollout + "?future_frames=abc", {
            "data": npy_bytes(context(2)), "headers": npy}, 422, "invalid_field"),
    }


BAD = sorted(bad_requests("unused"))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_json_error_saying_what_is_wrong(served, case, tmp_path):
    url = served[0]
    marker = str(tmp_path / "unpickled")
    route, kwargs, status, code = bad_requests(marker)[case]
    response = requests.post(url + route, timeout=60, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and len(body["detail"]) > 10, body
    assert not os.path.exists(marker), "the server unpickled a request body"


def test_the_model_replica_keeps_serving_after_bad_input(served):
    url, model, _ = served
    for route in ("/v1/models/nope/predict", f"/v1/models/{NAME}/predict"):
        requests.post(url + route, data=b"\x00garbage", timeout=30,
                      headers={"Content-Type": "application/x-npy"})
    response = requests.post(f"{url}/v1/models/{NAME}/predict", json=png_body(context(2)),
                             timeout=60)
    assert response.status_code == 200
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_unknown_routes_answer_json_404(served):
    response = requests.get(served[0] + "/v2/whatever", timeout=30)
    assert response.status_code == 404 and response.json()["error"] == "http_error"


def test_smoke_deploys_beside_a_running_app_and_removes_itself(served):
    from ray import serve

    from jobs.serve import SMOKE_APP, smoke

    url, _, version = served
    video = np.concatenate([context(6, seed=3), context(2, seed=4)])
    out = smoke(NAME, "candidate", video)
    assert out["url"].startswith(url) and out["version"] == version
    assert out["context_frames"] == 6 and 0 <= out["mse"] <= 1
    assert out["deploy_s"] > 0 and out["timing_ms"]["total"] > 0
    assert SMOKE_APP not in serve.status().applications
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_serve_job_names_a_missing_model_in_one_line(capsys):
    from jobs.serve import main

    assert main(["--model", "no-such-model", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-model" in err and len(err.splitlines()) == 1


def test_config_file_is_a_serve_config_whose_deployments_match_its_models():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(
        (REPO / "serve" / "config.yaml").read_text()))
    assert config.http_options.host == "127.0.0.1"
    app = config.applications[0]
    assert app.import_path == "serve.app:build_app"
    args = AppArgs.model_validate(app.args)
    assert [(m.name, m.alias) for m in args.models][0] == ("vblt-2d-int8", "candidate")
    assert {d.name for d in app.deployments} == {m.name for m in args.models} | {"Ingress"}
    for deployment in app.deployments:
        if deployment.name != "Ingress":
            assert set(deployment.user_config) == {"max_batch_size", "batch_wait_timeout_s"}
            assert deployment.autoscaling_config["max_replicas"] >= 1


@pytest.mark.slow  # a second local Ray and Serve, started in a subprocess
def test_serve_job_serves_until_ctrl_c_then_shuts_down_cleanly(registered):
    """`python -m jobs.serve` as a user runs it: its own local Ray, then SIGINT (Ctrl-C)."""
    import signal
    import subprocess
    import sys
    import time

    from jobs.serve import free_port

    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.serve", "--model", NAME, "--port", str(port),
         "--cpus-per-replica", "0.25"], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:  # not listening yet, or the app still starting
                pass
            time.sleep(1)
        listed = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert listed["models"][0]["version"] == registered[1]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-2000:]
    assert "serve: stopped" in output
    with pytest.raises(requests.ConnectionError, match="Connection refused|Max retries"):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def register_w8a8_candidate(model, plan, name: str) -> None:
    """Log a W8A8 tiny V-BLT and register it as name@candidate."""
    from framecast.quant.plan import plan_records

    with mlflow.start_run():
        info = model_io.log_model(model, "vblt", registered_name=name, extra={
            "frame_shape": FRAME_SHAPE, "preset": "tiny", "precision": "w8a8",
            "quant_plan": plan_records(plan)})
    mlflow.MlflowClient().set_registered_model_alias(name, "candidate",
                                                     info.registered_model_version)


def all_int8_w8a8(registered):
    """The registered tiny V-BLT with every linear layer W8A8 in int8; (model, plan)."""
    from framecast.quant.apply import quantize_model
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import PlanEntry, Precision
    from framecast.quant.sensitivity import weight_sensitivity
    from framecast.train import batch_loss

    quant = create("vblt", "tiny")
    quant.load_state_dict(registered[0].state_dict())
    video = torch.randint(0, 256, (1, *FRAME_SHAPE), dtype=torch.uint8)
    linearize(quant)
    plan = [PlanEntry(name, s, Precision.INT8) for name, s in
            weight_sensitivity(quant, [video], batch_loss).items()]
    quantize_model(quant, plan)
    return quant, plan


def dynamically_patched_w8a8():
    """V-BLT with entropy-driven patches (its entropy model taught that the background stays
    black, so slices mix patch sizes), quantized to W8A8; (model, plan, context frames)."""
    from framecast.quant.apply import layer_roles, quantize_model
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import PlanEntry, Precision

    torch.manual_seed(0)
    model = create("vblt", "tiny", patch=(1, 4, 4), patching="entropy", entropy_threshold=1.0)
    video = torch.zeros(2, 8, 16, 16, 1, dtype=torch.uint8)
    for t in range(8):
        video[:, t, 2:6, 2 + t // 2:6 + t // 2] = 200
    opt = torch.optim.Adam(model.entropy_model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model.entropy_model.loss(video)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    frames = video[0, :4].numpy()
    selected, _ = model.patch_selection(torch.from_numpy(frames)[None])
    assert sum(bool(s.any()) for s in selected) >= 2  # more than one patch size in use
    linearize(model)
    plan = [PlanEntry(n, 0.0, Precision.INT8) for n in sorted(layer_roles(model))]
    quantize_model(model, plan)
    return model, plan, frames


@pytest.fixture(scope="module")
def second_app(ray_local, served, registered):
    """One more app beside the module's, at /more (one deployment for three tests): the W8A8
    models NAME-int8 and NAME-dynamic, and NAME@candidate in `precision: auto`, one replica
    each (a quarter CPU, one torch thread). Yields (base URL, {what: (model, plan)},
    the dynamic model's context frames)."""
    from ray import serve

    url, _, _ = served
    int8 = all_int8_w8a8(registered)
    *dynamic, frames = dynamically_patched_w8a8()
    register_w8a8_candidate(*int8, f"{NAME}-int8")
    register_w8a8_candidate(*dynamic, f"{NAME}-dynamic")
    args = AppArgs(models=[ModelSpec(name=name, alias="candidate", torch_threads=1,
                                     num_cpus=0.25)
                           for name in (f"{NAME}-int8", f"{NAME}-dynamic", NAME)],
                   ingress_cpus=0.1)
    serve.run(build_app(args), name="framecast-test-more", route_prefix="/more")
    try:
        yield f"{url}/more", {"int8": int8, "dynamic": tuple(dynamic)}, frames
    finally:
        serve.delete("framecast-test-more")


def test_an_int8_replica_measures_its_kernels_at_warm_up_and_lists_them(served, second_app):
    """W8A8 layers choose their int8 GEMM path by timing at first use: the replica's warm-up
    does it (not the first request), and /v1/models shows what it chose."""
    url, _, _ = served
    more, models, _ = second_app
    _, plan = models["int8"]
    name = f"{NAME}-int8"
    entry = requests.get(f"{more}/v1/models/{name}", timeout=60).json()
    assert entry["precision"] == "w8a8"
    chosen = entry["kernels"]["shapes"]
    assert chosen and set(chosen.values()) <= {"int_mm", "onednn", "onednn_u7", "fp32_gemm"}
    assert sum(entry["kernels"]["int8_gemm"].values()) == len(chosen)
    layers = entry["kernels"]["layer_shapes"]  # int8, or float from the int8 weights
    assert layers and set(layers.values()) <= {"int8", "fp32_from_int8"}  # fp32 inputs
    # each W8A8 layer lists the form it chose at warm-up for every token class it met
    per_layer = entry["layer_forms"]
    assert set(per_layer) == {e.layer for e in plan}
    assert all(set(forms.values()) <= {"int8", "fp32_from_int8"}
               for forms in per_layer.values())
    # No bf16 quality check on record for this model: it computes in fp32 (auto).
    assert entry["compute"] == "fp32"
    assert entry["precision_choice"]["candidates"] == ["fp32"]
    response = requests.post(f"{more}/v1/models/{name}/predict", json=png_body(context(2)),
                             timeout=60)
    assert response.status_code == 200
    fp32 = requests.get(f"{url}/v1/models/{NAME}", timeout=30).json()
    assert fp32["kernels"]["int8_gemm"] == {}  # a float model runs no int8 GEMM


def test_a_dynamically_patched_w8a8_model_serves_predict_as_called_directly(second_app):
    """The dynamically patched W8A8 V-BLT served: /predict answers what the loaded model
    computes."""
    more, _, frames = second_app
    name = f"{NAME}-dynamic"
    loaded, _ = model_io.load_logged_model(f"models:/{name}@candidate")
    response = requests.post(f"{more}/v1/models/{name}/predict", json=png_body(frames),
                             timeout=60)
    assert response.status_code == 200, response.text
    got = np.stack([decode_png(f) for f in response.json()["frames"]])
    with torch.no_grad():
        want, _ = direct_step(loaded.eval(), frames)
    # The replica times its own int8 kernels (another may win there): near-equal bytes.
    assert got.shape == want.shape and np.mean(np.abs(got.astype(int) - want) <= 1) > 0.98


def test_a_call_whose_replica_died_is_sent_again_and_gives_up_after_its_deadline(monkeypatch):
    """The ingress's retry (serve/app.py `_call`), without a cluster: a call that fails with
    a RayActorError (its replica died) is sent again until it answers; past REPLICA_RETRY_S
    it is a 503, and bad input from the replica is never retried."""
    import asyncio

    from ray.exceptions import ActorDiedError

    from serve import app
    from serve.codec import RequestError

    sent = []

    def send(failures: int, error: Exception):
        async def answer():
            sent.append(1)
            if len(sent) <= failures:
                raise error
            return {"ok": True}
        return answer

    assert asyncio.run(app._call(send(2, ActorDiedError()))) == {"ok": True}
    assert len(sent) == 3
    sent.clear()
    monkeypatch.setattr(app, "REPLICA_RETRY_S", 0.2)
    with pytest.raises(RequestError) as err:
        asyncio.run(app._call(send(10**6, ActorDiedError())))
    assert err.value.status == 503 and "died" in str(err.value) and 2 < len(sent) < 20
    sent.clear()
    with pytest.raises(RequestError) as err:
        asyncio.run(app._call(send(1, ValueError("bad frames"))))
    assert err.value.status == 422 and len(sent) == 1


def test_the_docs_page_works_offline_its_assets_served_by_the_app(served):
    """/docs is Swagger UI 5 (OpenAPI 3.1) from the app itself: the page names no URL outside
    the app, and every asset it names, and the schema, answer 200."""
    import re
    from urllib.parse import urljoin, urlparse

    url, _, _ = served
    page = requests.get(f"{url}/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui" in page.text
    named = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    named += re.findall(r"url: '([^']+)'", page.text)  # the OpenAPI schema
    assert any(u.endswith(".js") for u in named) and any(u.endswith(".css") for u in named)
    here = urlparse(url).netloc
    for target in named:
        full = urljoin(f"{url}/docs", target)
        assert urlparse(full).netloc == here, f"/docs loads {target} from elsewhere"
        assert requests.get(full, timeout=30).status_code == 200, target
    assert requests.get(f"{url}/redoc", timeout=30).status_code == 404  # it loaded a CDN too


def test_auto_precision_keeps_the_faster_measured_form_and_says_why(second_app):
    """precision auto (the default): fp32, and bf16 where this CPU computes it natively, each
    timed at every power-of-two batch up to a full one at start, the faster kept per batch
    size; /v1/models lists the times and the choice, and an answer names its batch's form."""
    from framecast.quant import compute_form

    more, _, _ = second_app
    entry = requests.get(f"{more}/v1/models/{NAME}", timeout=60).json()
    choice = entry["precision_choice"]
    assert choice["asked"] == "auto"
    assert choice["candidates"] == list(compute_form.available())
    assert entry["compute"] == entry["precision"] == choice["chosen"]
    assert entry["compute_by_batch"] == choice["by_batch"]
    assert set(choice["by_batch"]) == {"1", "2", "4", "8"}
    assert choice["by_batch"]["8"] == choice["chosen"]
    if len(choice["candidates"]) > 1:  # timed side by side, the faster kept per batch size
        ms = choice["ms"]
        assert set(ms) == {"fp32", "bf16"} and all(set(by) == {"1", "2", "4", "8"}
                                                   for by in ms.values())
        for b, form in choice["by_batch"].items():
            assert form == min(ms, key=lambda f, b=b: ms[f][b])
        assert "fastest measured" in choice["why"]
    else:
        assert set(choice["by_batch"].values()) == {"fp32"}
    response = requests.post(f"{more}/v1/models/{NAME}/predict", json=png_body(context(2)),
                             timeout=60)
    assert response.status_code == 200
    # alone, it rode in a batch of one
    assert response.json()["batch_sizes"] == [1]
    assert response.json()["precision"] == choice["by_batch"]["1"]


def test_the_ingress_goes_on_the_head_and_fits_a_head_without_spare_cpus(ray_local):
    """On a cluster, a worker node's loss must never take the ingress (and the requests it holds)
    with it: the ingress asks for the resource only the head has. A head with fewer CPUs than
    the ingress would reserve (`--num-cpus 0`) still takes it, reserving none."""
    from serve.app import HEAD_RESOURCE, ingress_actor_options

    assert HEAD_RESOURCE in ray_local.cluster_resources()  # Ray's name for it, still
    pinned = ingress_actor_options(AppArgs(ingress_cpus=0.1))
    assert pinned == {"num_cpus": 0.1, "resources": {HEAD_RESOURCE: 0.001}}
    too_big = ingress_actor_options(AppArgs(ingress_cpus=3.0))  # ray_local's head: 2 CPUs
    assert too_big == {"num_cpus": 0.0, "resources": {HEAD_RESOURCE: 0.001}}
    assert ingress_actor_options(AppArgs(ingress_cpus=3.0, ingress_on_head=False)) == {
        "num_cpus": 3.0}


def test_a_damaged_png_is_named_without_our_memory_addresses():
    """PIL says "cannot identify image file <_io.BytesIO object at 0x7f...>": the 400 told the
    client an address in the replica's memory."""
    from serve.codec import InputSpec, RequestError, decode_png_frames

    spec = InputSpec(16, 16, 1, 1, 8, 8)
    good = base64.b64decode(encode_png(np.zeros((16, 16, 1), np.uint8)))
    with pytest.raises(RequestError) as err:
        decode_png_frames([base64.b64encode(good[:40]).decode()], spec)
    text = err.value.message
    assert err.value.code == "bad_png" and text.startswith(
        "frames[0] is a damaged PNG: cannot identify image file"), text
    assert "0x" not in text and "object at" not in text, text
