"""The HTTP front door (FastAPI behind Ray Serve) and the application builder.

    serve run serve/config.yaml                         # or: serve deploy serve/config.yaml
    python -m jobs.serve --model vblt-2d-int8 --alias candidate

Routes (OpenAPI docs at /docs): GET /healthz, GET /v1/models, GET /v1/models/{name},
POST /v1/models/{name}/predict and /rollout (frame predictors), POST /v1/models/{name}/generate
(token generators). Models are addressed by their registered name and reached only through their
family's interface, so any model in the registry serves through its family's routes. The
ingress checks every request before it reaches a model (see serve/codec.py): bad input is a 4xx
JSON error `{"error": code, "detail": line}`.
This module has no `from __future__ import annotations`: Serve reads the builder's typed argument
at run time.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_swagger import patch_fastapi
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from framecast.heap import worker_env
from serve import codec
from serve.codec import RequestError
from serve.model_deployment import DEFAULT_BATCH, ModelReplica, future_limit, wrong_route

MiB = 2**20
INFO_TTL_S = 10.0  # how long the ingress trusts a model's input spec before asking again
# How long a model call is sent again after its replica died: long enough for Serve to start a
# replacement when no other replica is left (benchmarks/RESULTS.md, fault_tolerance).
REPLICA_RETRY_S = 60.0


class ModelSpec(BaseModel):
    """One registered model to serve, and its deployment's resources."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="registered model name; also its route and deployment name")
    alias: str = Field("latest", description="registry alias; 'latest' = the newest version")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per replica")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling target")
    max_batch_size: int = Field(DEFAULT_BATCH["max_batch_size"], ge=1,
                                description="dynamic batch size; 1 turns batching off")
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH["batch_wait_timeout_s"], ge=0)
    torch_threads: int = Field(0, ge=0, description="torch threads per replica (0: Ray's)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="compute precision: auto keeps the faster of fp32 and bf16 for "
                            "each batch size as measured at start (bf16 only where the CPU "
                            "computes it natively, AMX / avx512_bf16; for a quantized model "
                            "only once jobs.quantize "
                            "found its bf16 form within its PSNR limit); bf16 asked where it is "
                            "not native is refused")


class AppArgs(BaseModel):
    """The builder's arguments (`args:` in serve/config.yaml)."""

    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec(name="vblt-2d-int8", alias="candidate")], min_length=1)
    tracking_uri: str = Field("", description="MLflow store the replicas load from (default: "
                                              "MLFLOW_TRACKING_URI or $FRAMECAST_HOME/mlruns)")
    max_body_mb: float = Field(32.0, gt=0, description="larger request bodies get 413")
    max_context_frames: int = Field(0, ge=0, description="0: the training length minus a step")
    max_future_frames: int = Field(32, ge=1, description="longest rollout")
    ingress_cpus: float = Field(0.25, ge=0, description="CPUs the ingress reserves (none when "
                                "it goes on a head node that has fewer CPUs than this)")
    ingress_on_head: bool = Field(True, description=(
        "place the ingress on the head node, beside the HTTP proxy clients reach there: the "
        "loss of any other node then never drops a request the ingress holds (the model calls "
        "it lost are sent again); the head's loss is the cluster's"))


class Batching(BaseModel):
    max_batch_size: int
    batch_wait_timeout_s: float


class ModelInfo(BaseModel):
    name: str
    alias: str
    version: str
    family: Literal["frame_predictor", "token_generator"] = Field(
        description="the model's family: a frame predictor (/predict, /rollout) or a token "
                    "generator (/generate)")
    architecture: str = Field(description="the registry's model name, e.g. vblt")
    precision: str = Field(description="a float model's form at its max batch size (fp32, "
                                       "bf16), or what a quantized one stores (w8a8)")
    compute: Literal["fp32", "bf16"] = Field(description="the form the replica computes a batch "
                                                         "of its max batch size in")
    compute_by_batch: dict[str, Literal["fp32", "bf16"]] = Field(
        default_factory=dict, description="the form each dynamic batch size computes in, keyed "
        "by the power-of-two batch class (a batch of 3 computes as one of 4): the fastest "
        "measured at start")
    precision_choice: dict[str, Any] = Field(
        description="how the compute forms were chosen: asked, candidates, ms per form and "
                    "batch size measured at start, the form per batch size, why")
    preset: str | None
    config: dict[str, Any] = Field(description="the model's config (a generator's block shape, "
                                               "its tokenizer reference, ...)")
    components: dict[str, dict[str, str]] = Field(
        description="models it contains, e.g. a generator's tokenizer: architecture and the "
                    "reference it was trained with")
    frame_shape: list[int]
    input: codec.InputSpec  # the same limits the ingress checks requests against
    batching: Batching
    kernels: dict[str, Any] = Field(description="the replica's CPU int8/bf16 flags and the int8 "
                                                "GEMM path its warm-up measured per shape class")
    layer_forms: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="each W8A8 layer's compute form (int8, fp32_from_int8, "
        "bf16_from_int8) per token class and input dtype, chosen at the replica's warm-up; "
        "empty for a float model")
    heap: dict[str, bool] = Field(
        default_factory=dict, description="whether glibc keeps freed memory for the next batch "
        "in this replica (freed_memory_kept) and did so from the process's start, the request "
        "thread included (from_process_start); FRAMECAST_KEEP_FREED_MEMORY=0 turns it off")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Answer(BaseModel):
    """What every model route's JSON answer starts with."""

    model: str
    version: str
    precision: str = Field(description="a float model's compute form for this request's batch "
                           "(fp32, bf16; fp32+bf16 for a rollout whose steps rode in batches of "
                           "both), or what a quantized model stores (w8a8)")
    context_frames: int


class FramesResponse(Answer):
    frames: list[codec.PngFrame] = Field(description="predicted frames, base64 PNG")
    entropy: list[codec.PngFrame] = Field(description="per-pixel entropy maps, base64 PNG; a "
                                                      "pixel p means p * entropy_png_bits bits")
    entropy_png_bits: float
    mean_entropy_bits: list[float] = Field(description="mean entropy of each predicted frame")
    batch_sizes: list[int] = Field(description="size of the dynamic batch of each model step")
    timing_ms: dict[str, float]


class GenerateResponse(Answer):
    frames: list[codec.PngFrame] = Field(description="generated frames, base64 PNG")
    forward_steps: int = Field(description="generator forward passes (one per block)")
    batch_sizes: list[int] = Field(description="size of the dynamic batch the request rode in")
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    error: codec.ErrorCode = Field(description="what went wrong, as a stable code")
    detail: str = Field(description="one line for a person")


ERRORS = {status: {"model": ErrorBody} for status in (400, 404, 413, 415, 422, 503)}


def _body_doc(schema: type[BaseModel]) -> dict[str, Any]:
    """The request body in the OpenAPI docs: the route reads it raw, to take JSON or .npy."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema.model_json_schema()},
        "application/x-npy": {"schema": {"type": "string", "format": "binary", "description":
                                         "uint8 (T, H, W, C) array as np.save writes it; "
                                         "answered with an .npz"}}}}}


NPZ_DOC = {codec.NPZ_TYPE: {"schema": {"type": "string", "format": "binary", "description":
                                       "frames uint8 (S, H, W, C), entropy float32 bits"}}}

app = FastAPI(title="framecast", version="1",
              description="Next-frame prediction with per-pixel uncertainty for the models in the "
                          "framecast MLflow registry. Send context frames as base64 PNGs in JSON, "
                          "or a uint8 .npy array; the answer comes back in the same family.",
              # FastAPI's own pages load Swagger UI and ReDoc from a CDN: blank offline.
              docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None)
# /docs: Swagger UI 5 from the fastapi-swagger package, its assets served by this app.
patch_fastapi(app, docs_url="/docs", redirect_from_root_to_docs=False)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


@app.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return _error(err.status, err.code, err.message)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5]]
    return _error(422, "invalid_field", "; ".join(parts))


@app.exception_handler(Exception)
async def _internal_error(_: Request, err: Exception) -> JSONResponse:
    """A bug, not bad input: still JSON, with the exception's type for the logs' reader."""
    return _error(500, "internal", f"{type(err).__name__} (see the Serve logs)")


@app.exception_handler(HTTPException)
async def _http_error(_: Request, err: HTTPException) -> JSONResponse:
    return _error(err.status_code, "http_error", str(err.detail))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large",
                           f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# The JSON body each model route reads; the route's name is also the replica method it calls.
REQUESTS: dict[str, type[codec.PredictRequest]] = {
    "predict": codec.PredictRequest, "rollout": codec.RolloutRequest,
    "generate": codec.GenerateRequest}


def parse_request(kind: str, body: bytes, route: str, info: dict[str, Any],
                  query: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """(uint8 context frames, the replica method's other arguments) from a checked body: the
    fields of the route's JSON schema, or for a .npy upload the route's query parameters (the
    schema's defaults where absent). `info` is the model's (its input spec and family)."""
    schema, spec = REQUESTS[route], info["input"]
    if kind == "json":
        parsed = codec.parse_json(body, schema)
        given = [k for k, v in query.items() if v is not None]
        if given:
            where = "a query parameter" if len(given) == 1 else "query parameters"
            raise RequestError(422, "invalid_field", f"give {', '.join(given)} in the JSON body, "
                               f"not as {where}")
        frames = codec.decode_png_frames(parsed.frames, spec)
        params = parsed.model_dump(exclude={"frames"})
    else:
        if "future_frames" in schema.model_fields and query.get("future_frames") is None:
            raise RequestError(422, "invalid_field", "future_frames is required: "
                               "?future_frames=N for a .npy upload")
        frames = codec.decode_npy(body, spec)
        params = {k: f.default for k, f in schema.model_fields.items() if not f.is_required()}
        params.update((k, v) for k, v in query.items() if v is not None)
    if "top_k" in params:
        params["top_k"] = params["top_k"] or 0  # absent: all tokens
    future = params.get("future_frames")
    if info["family"] == "token_generator":
        trained = info["frame_shape"][0]
        most = future_limit(spec, trained, len(frames))
        if future > most:
            raise RequestError(422, "too_many_future_frames",
                               f"future_frames={future}; after {len(frames)} context frames this "
                               f"model generates at most {most} (it was trained on clips of "
                               f"{trained} frames)")
    elif future is not None and future > spec.max_future_frames:
        raise RequestError(422, "too_many_future_frames", f"future_frames={future}; this "
                           f"model rolls out at most {spec.max_future_frames}")
    return frames, params


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 3)


async def _call(send: Callable[[], Any]) -> dict[str, Any]:
    """Send a model call (`send()` -> a DeploymentResponse) and await it; the replica's own input
    checks come back as 422, a full queue as 503.

    A replica that dies with the request in hand (SIGKILL, its node lost) fails the call with a
    RayActorError, and Serve does not retry a request a replica had accepted
    (ray-project/ray#52365). Every model call here is a pure function of its inputs (generation
    included: its seed is part of the request), so the ingress sends it again, to another
    replica or to the one that replaces the dead one, for up to REPLICA_RETRY_S: the client
    sees a slower answer, not an error."""
    deadline = time.monotonic() + REPLICA_RETRY_S
    wait = 0.05
    while True:
        try:
            return await send()
        except ValueError as err:
            raise RequestError(422, "rejected_by_model",
                               str(getattr(err, "cause", err))) from None
        except (BackPressureError, DeploymentUnavailableError) as err:
            raise RequestError(503, "unavailable", str(err).splitlines()[0]) from None
        except RayActorError as err:
            if time.monotonic() + wait > deadline:
                raise RequestError(503, "unavailable", "the model's replica died and no other "
                                   f"answered within {REPLICA_RETRY_S:.0f} s: "
                                   f"{str(err).splitlines()[0]}") from None
            await asyncio.sleep(wait)
            wait = min(2 * wait, 1.0)


def _split_model_call(model_call: float, result: dict[str, Any]) -> dict[str, float]:
    """model_call = transport (routing, to and from the replica) + queue (waiting in the
    replica's batcher) + inference (the model calls of the batches the request rode in)."""
    return {"model_call": model_call,
            "transport": round(max(model_call - result["replica_ms"], 0.0), 3),
            "queue": round(max(result["replica_ms"] - result["inference_ms"], 0.0), 3),
            "inference": round(result["inference_ms"], 3)}


def _server_timing(timing: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', '-')};dur={v}" for k, v in timing.items())


def _predicted_fields(result: dict[str, Any]) -> dict[str, Any]:
    """A frame predictor's JSON answer besides the frames: their entropy maps."""
    entropy = result["entropy"]
    return {"entropy": codec.encode_png_frames(codec.entropy_to_png_bytes(entropy)),
            "entropy_png_bits": codec.ENTROPY_PNG_BITS,
            "mean_entropy_bits": [float(e.mean()) for e in entropy]}


def _generated_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {"forward_steps": result["forward_steps"]}


# Each family's JSON answer, and its fields besides those every answer has.
ANSWERS: dict[str, tuple[type[Answer], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "frame_predictor": (FramesResponse, _predicted_fields),
    "token_generator": (GenerateResponse, _generated_fields)}


def _respond(name: str, family: str, kind: str, start: float, timing: dict[str, float],
             context_frames: int, result: dict[str, Any]) -> Response:
    """A model route's answer: the result's arrays as one .npz for a .npy request (frames, and
    entropy where there is some), else the family's JSON answer; the headers name the model,
    version and precision, and time every stage."""
    mark = time.perf_counter()
    headers = {"X-Framecast-Model": name, "X-Framecast-Version": result["version"],
               "X-Framecast-Precision": result["precision"]}
    if kind == "npy":
        content = codec.encode_npz(**{k: result[k] for k in ("frames", "entropy") if k in result})
        timing.update(encode=_ms(mark), total=_ms(start))
        headers["Server-Timing"] = _server_timing(timing)
        return Response(content, media_type=codec.NPZ_TYPE, headers=headers)
    response, fields = ANSWERS[family]
    body = {"context_frames": context_frames,
            "frames": codec.encode_png_frames(result["frames"]), **fields(result)}
    timing.update(encode=_ms(mark), total=_ms(start))
    headers["Server-Timing"] = _server_timing(timing)
    answer = response(model=name, version=result["version"], precision=result["precision"],
                      batch_sizes=result["batch_sizes"], timing_ms=timing, **body)
    return JSONResponse(answer.model_dump(), headers=headers)


# Everything the routes use is defined above them: serve.ingress freezes the FastAPI app
# (cloudpickle) when the class is decorated.
@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    """Parses and checks requests, calls the model deployments, encodes answers."""

    def __init__(self, models: dict[str, DeploymentHandle], max_body_bytes: int) -> None:
        self.models = models
        self.max_body_bytes = max_body_bytes
        self._info: dict[str, tuple[float, dict[str, Any]]] = {}

    async def _model_info(self, name: str, fresh: bool = False) -> dict[str, Any]:
        if name not in self.models:
            raise RequestError(404, "unknown_model", f"no model named {name!r} is deployed; "
                               f"deployed: {', '.join(sorted(self.models))}")
        cached = self._info.get(name)
        if fresh or cached is None or time.monotonic() - cached[0] > INFO_TTL_S:
            cached = (time.monotonic(), await _call(self.models[name].info.remote))
            self._info[name] = cached
        return cached[1]

    @app.get("/healthz", summary="Liveness of the HTTP front door")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": sorted(self.models)}

    @app.get("/v1/models", summary="What is deployed")
    async def list_models(self) -> ModelList:
        return ModelList(models=[ModelInfo(**await self._model_info(n, fresh=True))
                                 for n in sorted(self.models)])

    @app.get("/v1/models/{name}", summary="One deployed model", responses=ERRORS)
    async def model_info(self, name: str) -> ModelInfo:
        return ModelInfo(**await self._model_info(name, fresh=True))

    @app.post("/v1/models/{name}/predict", summary="Predict the next frames",
              response_model=FramesResponse,
              responses={**ERRORS, 200: {"content": NPZ_DOC}},
              openapi_extra=_body_doc(REQUESTS["predict"]))
    async def predict(self, name: str, request: Request) -> Response:
        """Context frames in; the next `frames_per_step` frames and their entropy maps out."""
        return await self._serve(name, "predict", request, {})

    @app.post("/v1/models/{name}/rollout", summary="Predict many frames autoregressively",
              response_model=FramesResponse,
              responses={**ERRORS, 200: {"content": NPZ_DOC}},
              openapi_extra=_body_doc(REQUESTS["rollout"]))
    async def rollout(self, name: str, request: Request, future_frames: int | None = Query(
            None, gt=0, description="frames to predict (for .npy uploads; JSON bodies carry "
                                    "it as a field)")) -> Response:
        """Context frames and a number of future frames in; each step's prediction is fed back as
        context for the next."""
        return await self._serve(name, "rollout", request, {"future_frames": future_frames})

    @app.post("/v1/models/{name}/generate", summary="Generate the frames after a context",
              response_model=GenerateResponse,
              responses={**ERRORS, 200: {"content": NPZ_DOC}},
              openapi_extra=_body_doc(REQUESTS["generate"]))
    async def generate(
            self, name: str, request: Request,
            future_frames: int | None = Query(None, gt=0, description="frames to generate "
                                              "(.npy uploads; JSON bodies carry the settings "
                                              "as fields)"),
            temperature: float | None = Query(None, ge=0, allow_inf_nan=False,
                                              description="0 = greedy; default 1"),
            top_k: int | None = Query(None, ge=1, description="sample among the k likeliest "
                                                              "tokens; absent = all"),
            seed: int | None = Query(None, ge=0, le=codec.MAX_SEED,
                                     description="the same seed, the same frames (64 bits)")
    ) -> Response:
        """Context frames in; a token generator continues them block by block (sampling with
        the given temperature, top-k and seed) and the generated frames come out."""
        return await self._serve(name, "generate", request, {
            "future_frames": future_frames, "temperature": temperature, "top_k": top_k,
            "seed": seed})

    async def _serve(self, name: str, route: str, request: Request, query: dict[str, Any]
                     ) -> Response:
        """Every model route: the model's spec (404 unknown, 422 another family's route), the
        body's kind (415), bytes (413) and fields (4xx, with the route's `query` parameters),
        the replica's answer encoded as the request came; every stage timed."""
        start = time.perf_counter()
        info = await self._model_info(name)
        why = wrong_route(name, info["family"], route)
        if why:
            raise RequestError(422, "wrong_route", why)
        kind = codec.check_content_type(request.headers.get("content-type"))
        mark = time.perf_counter()
        body = await read_body(request, self.max_body_bytes)
        timing = {"read": _ms(mark)}
        mark = time.perf_counter()
        frames, params = parse_request(kind, body, route, info, query)
        timing["decode"] = _ms(mark)
        mark = time.perf_counter()
        method = getattr(self.models[name], route)
        result = await _call(lambda: method.remote(frames, **params))
        timing.update(_split_model_call(_ms(mark), result))
        return _respond(name, info["family"], kind, start, timing, len(frames), result)


def build_app(args: AppArgs) -> serve.Application:
    """The application: one `ModelReplica` deployment per listed model (named after it) and the
    ingress. Deployment options here are defaults; a config file's `deployments:` overrides them.
    """
    from framecast.tracking import default_tracking_uri

    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    names = [m.name for m in args.models]
    if len(set(names)) != len(names) or "Ingress" in names:
        raise ValueError(f"model names must be unique and not 'Ingress': {names}")
    tracking_uri = args.tracking_uri or default_tracking_uri()
    handles = {}
    for m in args.models:
        deployment = ModelReplica.options(
            # malloc set from the replica process's start: requests run in a thread Ray starts
            # first (framecast.heap)
            name=m.name, ray_actor_options={"num_cpus": m.num_cpus,
                                            "runtime_env": {"env_vars": worker_env()}},
            max_ongoing_requests=max(32, 4 * m.max_batch_size),
            autoscaling_config={"min_replicas": m.min_replicas, "initial_replicas": m.min_replicas,
                                "max_replicas": max(m.min_replicas, m.max_replicas),
                                "target_ongoing_requests": m.target_ongoing_requests},
            user_config={"max_batch_size": m.max_batch_size,
                         "batch_wait_timeout_s": m.batch_wait_timeout_s})
        handles[m.name] = deployment.bind(m.name, m.alias, tracking_uri, args.max_context_frames,
                                          args.max_future_frames, m.torch_threads, m.precision,
                                          m.max_batch_size)
    return Ingress.options(ray_actor_options=ingress_actor_options(args)).bind(
        handles, int(args.max_body_mb * MiB))


HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node 1 of it, no other node any


def ingress_actor_options(args: AppArgs) -> dict:
    """The ingress's Ray options: its CPUs, and with `ingress_on_head` a share of the resource
    only the head has. A head started with fewer CPUs than `ingress_cpus` (`ray start --head
    --num-cpus 0`, to keep work off it) gets the ingress reserving none, so it still fits."""
    if not args.ingress_on_head:
        return {"num_cpus": args.ingress_cpus}
    cpus = args.ingress_cpus
    if ray.is_initialized():
        head = next((n["Resources"] for n in ray.nodes()
                     if n["Alive"] and HEAD_RESOURCE in n["Resources"]), None)
        if head is not None and head.get("CPU", 0.0) < cpus:
            cpus = 0.0
    return {"num_cpus": cpus, "resources": {HEAD_RESOURCE: 0.001}}
