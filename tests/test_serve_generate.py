"""POST /v1/models/{name}/generate over real HTTP on a local Ray: a token generator (NBP with an
FSQ tokenizer), float and W8A8, both body formats, seeds, batching of mixed sampling settings,
each bad parameter's 422, and the bf16 refusal on CPUs without native bf16."""

import copy
import io
import json

import mlflow
import numpy as np
import pytest
import requests
import torch

from framecast import model_io, tracking
from framecast.models import registry
from framecast.quant import compute_form, kernels
from framecast.quant.apply import quantize_model
from framecast.quant.plan import PlanEntry, Precision, plan_records
from framecast.quant.sensitivity import linear_weights
from serve.app import AppArgs, ModelSpec, build_app
from serve.codec import decode_png, encode_png
from serve.inference import GenerationRequest, generate_batch

NAME = "t-gen"
FRAME_SHAPE = [4, 16, 16, 1]  # fsq tiny: 4x downsampling -> a 4x4x4 token grid; 1 condition slice


def make_generator() -> torch.nn.Module:
    torch.manual_seed(0)
    model = registry.build("nbp", registry.model_config("nbp", "tiny", tokenizer="fsq-t"),
                           tokenizer=registry.create("fsq", "tiny"))
    with torch.no_grad():  # larger weights than at init: tokens not all near-ties
        for name, p in model.named_parameters():
            if p.dim() > 1 and not name.startswith("tokenizer."):
                p.normal_(0.0, 0.1)
    return model.eval()


def register(model, name: str, **extra) -> str:
    tracking.use_experiment("test-serve-generate")
    with mlflow.start_run():
        info = model_io.log_model(model, "nbp", registered_name=name,
                                  extra={"frame_shape": FRAME_SHAPE, "preset": "tiny", **extra})
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "candidate", version)
    return version


@pytest.fixture(scope="module")
def generators():
    """NAME (fp32) and NAME-int8 (every generator linear W8A8), as loaded back."""
    model = make_generator()
    plan = [PlanEntry(n, 0.0, Precision.INT8) for n in linear_weights(model)]
    quant = quantize_model(copy.deepcopy(model), plan)
    register(model, NAME)
    register(quant, f"{NAME}-int8", precision="w8a8", quant_plan=plan_records(plan))
    return {n: model_io.load_logged_model(f"{n}@candidate")[0] for n in (NAME, f"{NAME}-int8")}


@pytest.fixture(scope="module")
def served(ray_local, generators):
    from ray import serve

    from jobs.serve import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(models=[ModelSpec(name=n, alias="candidate", torch_threads=1,
                                     precision="fp32")  # compared with direct calls
                           for n in generators], ingress_cpus=0.1)
    try:
        serve.run(build_app(args), name="framecast-test-gen", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def clip(n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def direct(model, frames: np.ndarray, future: int, **sampling) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replica
    try:
        return model.generate(torch.from_numpy(frames)[None], future, **sampling)[0].numpy()
    finally:
        torch.set_num_threads(threads)


def test_a_batch_of_mixed_sampling_settings_answers_each_as_if_alone(generators):
    model = generators[NAME]
    requests_ = [GenerationRequest(clip(1, 1), 3, 1.0, 0, 7),
                 GenerationRequest(clip(1, 2), 3, 0.0, 0, 0),
                 GenerationRequest(clip(1, 3), 3, 0.8, 5, 9),
                 GenerationRequest(clip(2, 4), 2, 1.0, 0, 7)]  # another length: its own call
    together = generate_batch(model, requests_)
    for r, frames in zip(requests_, together, strict=True):
        alone = generate_batch(model, [r])[0]
        assert frames.shape == (r.future_frames, 16, 16, 1)
        np.testing.assert_array_equal(frames, alone)


def test_the_listing_shows_family_block_tokenizer_and_precision(served):
    models = {m["name"]: m for m in requests.get(f"{served}/v1/models", timeout=60).json()[
        "models"]}
    entry = models[NAME]
    assert (entry["family"], entry["architecture"], entry["precision"]) == (
        "token_generator", "nbp", "fp32")
    assert entry["config"]["block"] == [1, 2, 2]
    assert entry["components"] == {"tokenizer": {"architecture": "fsq", "ref": "fsq-t"}}
    assert entry["input"]["min_context_frames"] == 1
    assert entry["input"]["max_future_frames"] == 3  # clips of 4 frames, 1 of context
    assert models[f"{NAME}-int8"]["precision"] == "w8a8"


@pytest.mark.parametrize("name", [NAME, f"{NAME}-int8"])
def test_png_and_npy_generation_equal_the_model_called_directly(served, generators, name):
    frames = clip(2, seed=5)
    url = f"{served}/v1/models/{name}/generate"
    body = {"frames": [encode_png(f) for f in frames], "future_frames": 2, "temperature": 0.9,
            "top_k": 50, "seed": 11}
    answer = requests.post(url, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    got = np.stack([decode_png(f) for f in doc["frames"]])
    want = direct(generators[name], frames, 2, temperature=0.9, top_k=50, seed=11)
    np.testing.assert_array_equal(got, want)
    assert doc["forward_steps"] == 2 * 4  # two slices of four 2x2 blocks
    assert doc["context_frames"] == 2 and doc["batch_sizes"] == [1]
    buf = io.BytesIO()
    np.save(buf, frames)
    raw = requests.post(url, data=buf.getvalue(), timeout=60,
                        params={"future_frames": 2, "temperature": 0.9, "top_k": 50, "seed": 11},
                        headers={"Content-Type": "application/x-npy"})
    assert raw.status_code == 200, raw.text
    np.testing.assert_array_equal(np.load(io.BytesIO(raw.content))["frames"], want)


def test_the_same_seed_gives_the_same_frames(served):
    url = f"{served}/v1/models/{NAME}/generate"
    frames = [encode_png(clip(1, 6)[0])]

    def ask(seed: int) -> list[str]:
        answer = requests.post(url, json={"frames": frames, "future_frames": 3, "seed": seed},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["frames"]

    first = ask(3)
    assert ask(3) == first
    assert ask(4) != first


def test_a_tiny_temperature_is_greedy_and_fails_no_request_batched_with_it(served):
    """temperature 1e-300 overflowed the tempered logits to nan: torch.multinomial raised and
    every request in the replica's batch got a 500. Now it is the greedy limit."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{served}/v1/models/{NAME}/generate"
    frames = [encode_png(clip(1, 7)[0])]
    bodies = [{"frames": frames, "future_frames": 3, "temperature": t, "seed": i}
              for i, t in enumerate([1e-300, 1.0, 1e-40, 0.7, 0.0, 1.0])]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: requests.post(url, json=b, timeout=120), bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies), [a.text for a in answers]
    greedy = answers[4].json()["frames"]
    assert answers[0].json()["frames"] == greedy and answers[2].json()["frames"] == greedy


BAD_GENERATE = {
    "temperature below 0": ({"temperature": -0.5}, "invalid_field", "temperature"),
    "top_k below 1": ({"top_k": 0}, "invalid_field", "top_k"),
    "future_frames past the clip": ({"future_frames": 4}, "too_many_future_frames",
                                    "future_frames=4"),
    "future_frames zero": ({"future_frames": 0}, "invalid_field", "future_frames"),
    "seed not an integer": ({"seed": "x"}, "invalid_field", "seed"),
    # Both passed the ingress before and failed inside the batch, with every request in it.
    "seed past 64 bits": ({"seed": 2**64}, "invalid_field", "seed"),
    "temperature infinite": ({"temperature": float("inf")}, "invalid_field", "temperature"),
}


@pytest.mark.parametrize("case", BAD_GENERATE)
def test_each_bad_parameter_gets_a_422_naming_it(served, case):
    fields, code, named = BAD_GENERATE[case]
    body = {"frames": [encode_png(clip(1)[0])], "future_frames": 2, **fields}
    # json.dumps writes inf as Infinity, which Python's json.loads (the ingress's) accepts
    answer = requests.post(f"{served}/v1/models/{NAME}/generate", data=json.dumps(body),
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == code and named in answer.json()["detail"]


def test_bad_npy_parameters_and_frames_are_refused_too(served):
    url = f"{served}/v1/models/{NAME}/generate"
    buf = io.BytesIO()
    np.save(buf, clip(1))
    for params, named in (({"future_frames": 2, "temperature": -1}, "temperature"),
                          ({"future_frames": 2, "temperature": "inf"}, "temperature"),
                          ({"future_frames": 2, "seed": 2**64}, "seed"),
                          ({"future_frames": 2, "top_k": 0}, "top_k"),
                          ({}, "future_frames")):
        answer = requests.post(url, data=buf.getvalue(), params=params, timeout=60,
                               headers={"Content-Type": "application/x-npy"})
        assert answer.status_code == 422 and named in answer.json()["detail"], answer.text
    wrong = np.zeros((1, 12, 12, 1), np.uint8)  # frames the tokenizer's grid cannot take here
    answer = requests.post(url, json={"frames": [encode_png(wrong[0])], "future_frames": 1},
                           timeout=60)
    assert answer.status_code == 422 and answer.json()["error"] == "wrong_frame_size"
    answer = requests.post(f"{served}/v1/models/{NAME}/predict",
                           json={"frames": [encode_png(clip(1)[0])]}, timeout=60)
    assert answer.status_code == 422 and answer.json()["error"] == "wrong_route"
    assert requests.get(f"{served}/healthz", timeout=30).status_code == 200


def test_bf16_is_refused_without_native_bf16_and_auto_is_fp32_there(monkeypatch, capsys):
    from jobs.serve import main

    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    with pytest.raises(ValueError, match="no native bf16"):
        compute_form.candidates("bf16", {"precision": "fp32"})
    with pytest.raises(SystemExit) as stopped:
        main(["--model", NAME, "--precision", "bf16"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no native bf16" in err
    allowed = {"precision": "w8a8", "bf16_compute": {"measured": True, "allowed": True}}
    for meta in ({"precision": "fp32"}, allowed):  # auto without native bf16: fp32, untimed
        assert compute_form.candidates("auto", meta) == ("fp32",)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"amx_bf16", "avx512_bf16"}))
    assert compute_form.candidates("bf16", {"precision": "fp32"}) == ("bf16",)
    assert compute_form.candidates("auto", {"precision": "fp32"}) == ("fp32", "bf16")
    assert compute_form.candidates("auto", allowed) == ("fp32", "bf16")
    # a quantized model whose bf16 form was not scored, or lost too much, stays fp32 on auto
    for record in ({}, {"bf16_compute": {"measured": True, "allowed": False}}):
        assert compute_form.candidates("auto", {"precision": "w8a8", **record}) == ("fp32",)
    with pytest.raises(ValueError, match="expected one of"):
        compute_form.candidates("fp16", {"precision": "fp32"})
