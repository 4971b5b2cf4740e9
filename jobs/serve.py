r"""Serve registered models over HTTP with Ray Serve until stopped (Ctrl-C shuts down cleanly).

    python -m jobs.serve                                       # vblt-2d-int8@candidate, :8000
    python -m jobs.serve --model vblt-2d-int8,vblt-2d@latest --port 8080
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
      --runtime-env-json "{\"env_vars\": {\"FRAMECAST_HOME\": \"$PWD\",
                                           \"RAY_JOB_STOP_WAIT_TIME_S\": \"30\"}}" \
      -- python -m jobs.serve --model vblt-2d-int8              # stop: ray job stop <id>

`--model` takes registered names, comma-separated, each with an optional `@alias` (otherwise
`--alias`; `latest` means the newest version). One model deployment per name, with dynamic
batching and autoscaling, behind one FastAPI ingress (serve/app.py): GET /healthz, GET /v1/models,
POST /v1/models/NAME/predict and /rollout (frame predictors), /generate (token generators);
OpenAPI docs at /docs. The same app runs with
`serve run serve/config.yaml`. Binds 127.0.0.1 unless --host says otherwise.

Ctrl-C or SIGTERM removes the app and, when this job started Serve, shuts Serve down (about 5 s);
`ray job stop` waits RAY_JOB_STOP_WAIT_TIME_S (default 3 s) before it kills the job, hence the 30.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from framecast.config import ConfigError, check_bounds
from jobs.common import run_job

SMOKE_APP = "framecast-smoke"


@dataclass(frozen=True)
class ServeJobConfig:
    model: str = field(default="vblt-2d-int8", metadata={
        "help": "registered model name(s), comma-separated, each optionally name@alias"})
    alias: str = field(default="candidate", metadata={
        "help": "alias for names given without one ('latest': the newest version)"})
    host: str = field(default="127.0.0.1", metadata={"help": "HTTP host to bind"})
    port: int = field(default=8000, metadata={"help": "HTTP port"})
    max_batch_size: int = field(default=8, metadata={
        "help": "dynamic batch size per model replica (1: no batching)"})
    batch_wait_ms: float = field(default=10.0, metadata={
        "help": "how long a replica waits to fill a batch"})
    min_replicas: int = field(default=1, metadata={"help": "replicas per model, at least"})
    max_replicas: int = field(default=1, metadata={"help": "replicas per model, at most "
                                                           "(autoscaling above min_replicas)"})
    cpus_per_replica: float = field(default=0.5, metadata={"help": "CPUs per model replica"})
    max_body_mb: float = field(default=32.0, metadata={"help": "request body limit (413 above)"})
    max_future_frames: int = field(default=32, metadata={
        "help": "most frames one /rollout or /generate request may ask for (a generator is "
                "also held to the clip length it was trained on)"})
    app_name: str = field(default="framecast", metadata={"help": "Serve application name"})
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "compute precision: auto keeps the faster of fp32 and bf16 for each batch "
                "size as each replica measures them at start (bf16 only on a CPU with native "
                "bf16, AMX / avx512_bf16; for a quantized model only once jobs.quantize found "
                "its bf16 form within its PSNR limit); a quantized model keeps its int8 weights "
                "either way. bf16 is refused where it is not native"})

    def __post_init__(self) -> None:
        if not model_specs(self.model, self.alias):
            raise ConfigError("--model needs at least one registered model name")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (1..65535)")
        check_bounds(self, positive=("max_batch_size", "min_replicas", "max_future_frames",
                                     "cpus_per_replica", "max_body_mb"),
                     non_negative=("batch_wait_ms",))
        if self.max_replicas < self.min_replicas:
            raise ConfigError(f"--max-replicas {self.max_replicas} must be >= --min-replicas "
                              f"{self.min_replicas}")
        if self.precision == "bf16":  # the replicas' own check, made here in one line
            from framecast.quant import compute_form

            try:
                compute_form.candidates("bf16", {})
            except ValueError as err:
                raise ConfigError(f"--{err}; serve as fp32 or auto") from None


def model_specs(models: str, alias: str) -> list[tuple[str, str]]:
    """'a,b@x' -> [('a', alias), ('b', 'x')]."""
    specs = []
    for item in filter(None, (part.strip() for part in models.split(","))):
        name, _, own = item.partition("@")
        specs.append((name, own or alias))
    return specs


def app_args(config: ServeJobConfig, tracking_uri: str) -> dict[str, Any]:
    """The arguments of serve.app:build_app for this config (what `args:` holds in a config
    file)."""
    models = [{"name": name, "alias": alias, "num_cpus": config.cpus_per_replica,
               "min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
               "max_batch_size": config.max_batch_size,
               "batch_wait_timeout_s": config.batch_wait_ms / 1e3,
               "precision": config.precision}
              for name, alias in model_specs(config.model, config.alias)]
    return {"models": models, "tracking_uri": tracking_uri, "max_body_mb": config.max_body_mb,
            "max_future_frames": config.max_future_frames}


def check_models(specs: list[tuple[str, str]]) -> dict[str, str]:
    """{name: registry version} for every model, before anything is deployed: a missing model,
    or one no route answers (a tokenizer), is one line for the user, not a replica failing to
    start a minute later."""
    import mlflow

    from framecast.model_io import logged_meta, resolve_version
    from framecast.tracking import default_tracking_uri
    from serve.model_deployment import FAMILY_ROUTES

    mlflow.set_tracking_uri(default_tracking_uri())
    versions = {}
    for name, alias in specs:
        versions[name] = resolve_version(name, alias)
        family = logged_meta(f"models:/{name}/{versions[name]}").get("family")
        if family is not None and family not in FAMILY_ROUTES:  # None: the replica tells
            raise ConfigError(f"{name}@{alias} (v{versions[name]}) is a {family}: jobs.serve "
                              "serves frame predictors (/predict, /rollout) and token "
                              "generators (/generate)")
    return versions


def port_is_free(host: str, port: int) -> bool:
    """Whether Serve's proxy could listen on host:port: no socket listens there. Probed with
    SO_REUSEADDR, as the proxy binds, so a port whose last server closed moments ago (its
    connections in TIME_WAIT) is free, as it is to the proxy."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_host(host: str) -> None:
    """Refuse (ConfigError) a --host this machine cannot bind (not one of its addresses, or
    no address at all), before Ray starts: otherwise it reads as a busy port."""
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError as err:  # socket.gaierror among them
        raise ConfigError(f"--host {host}: cannot bind it here ({err.strerror or err}); use "
                          "127.0.0.1, 0.0.0.0 or one of this machine's addresses") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_serve(host: str, port: int) -> tuple[str, bool]:
    """Start Serve's HTTP proxy on host:port, or find the one already running on this cluster
    (whose address wins: Serve cannot move it). Returns (base URL, whether we started it)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from framecast.cluster import init_ray, quiet_console

    init_ray()
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        http = client.http_config
        reach = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
        return f"http://{reach}:{http.port}", False
    if not port_is_free(host, port):
        raise ConfigError(f"port {port} on {host} is in use; pick another --port")
    quiet_console()  # importing ray.serve gave its logger a terminal handler at INFO
    serve.start(http_options={"host": host, "port": port})
    quiet_console()  # Serve's driver-side logger is set up by serve.start
    return f"http://{host}:{port}", True


def stop_app(name: str, started_serve: bool) -> None:
    """Remove our application; shut Serve down when we started it and nothing else runs there
    (one call, quick: `ray job stop` kills a job a few seconds after its SIGTERM)."""
    from ray import serve

    if started_serve and set(serve.status().applications) <= {name}:
        serve.shutdown()
    else:
        serve.delete(name)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM (what `ray job stop` sends); a second one interrupts.

    The first signal only sets the flag: a KeyboardInterrupt raised inside a Ray call can leave
    the driver's connection unusable, and the clean shutdown after it would hang."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def wait_until_stopped(app_name: str, stop: threading.Event) -> None:
    """Block until `stop` is set or the app has been removed (by `serve shutdown`, say)."""
    from ray import serve

    while not stop.wait(2.0):
        if app_name not in serve.status().applications:
            print(f"serve: application {app_name!r} was removed; exiting")
            return


def serve_job(config: ServeJobConfig) -> dict[str, Any]:
    from ray import serve

    from framecast.tracking import default_tracking_uri
    from serve.app import build_app

    check_host(config.host)
    specs = model_specs(config.model, config.alias)
    versions = check_models(specs)
    base, started = start_serve(config.host, config.port)
    if base != f"http://{config.host}:{config.port}":
        print(f"serve: Serve already runs on this cluster at {base}; using it")
    start = time.perf_counter()
    with stop_signals() as stop:  # Ctrl-C while deploying: stop cleanly once it is up
        serve.run(build_app(app_args(config, default_tracking_uri())), name=config.app_name,
                  route_prefix="/")
        served = ", ".join(f"{n}@{a} (v{versions[n]})" for n, a in specs)
        print(f"serve: {served} ready in {time.perf_counter() - start:.1f} s at {base}  "
              f"(docs: {base}/docs); Ctrl-C stops", flush=True)
        wait_until_stopped(config.app_name, stop)
    print("serve: stopping", flush=True)
    begin = time.perf_counter()
    stop_app(config.app_name, started)
    print(f"serve: stopped in {time.perf_counter() - begin:.1f} s")
    return {"url": base, "versions": versions}


def smoke(model_ref: str, alias: str, video: np.ndarray) -> dict[str, Any]:
    """`smoke_many` for one model."""
    return smoke_many([(model_ref, alias, video)])[0]


def smoke_many(items: list[tuple[str, str, np.ndarray]]) -> list[dict[str, Any]]:
    """Deploy every `(model_ref, alias, video)` in one app (one Serve start, replicas started
    side by side), send each model one request over HTTP with the first frames of its `video`
    (uint8 (T, H, W, C)), tear the app down. For the pipeline: proves the registered models
    serve. A frame predictor gets /predict, a token generator /generate (greedy, from its
    fewest context frames to the clip's end). Returns per model, in order: the URL, timings
    (s / ms), the frames that came back, and their MSE against the truth when `video` holds
    the frames that follow."""
    from ray import serve

    from framecast.cluster import total_cpus
    from framecast.tracking import default_tracking_uri
    from serve.app import build_app

    check_models([(ref, alias) for ref, alias, _ in items])
    base, started = start_serve("127.0.0.1", free_port())
    prefix = f"/{SMOKE_APP}"
    # Half a CPU per replica, less when that would not fit beside the ingress (0.25) on a
    # small machine: every replica must start for the app to come up.
    share = max(0.05, min(0.5, (total_cpus() - 0.25) / len(items)))
    args = {"models": [{"name": ref, "alias": alias, "num_cpus": share}
                       for ref, alias, _ in items],
            "tracking_uri": default_tracking_uri()}
    deploy = time.perf_counter()
    try:
        serve.run(build_app(args), name=SMOKE_APP, route_prefix=prefix)
        deploy_s = time.perf_counter() - deploy
        return [{**_smoke_request(f"{base}{prefix}/v1/models/{ref}", video),
                 "deploy_s": deploy_s} for ref, _, video in items]
    finally:
        stop_app(SMOKE_APP, started)


def _smoke_request(url: str, video: np.ndarray) -> dict[str, Any]:
    """One request to the model at `url` (its /v1/models/NAME), the reply decoded."""
    import requests

    from framecast.metrics import mse_per_frame
    from serve.codec import InputSpec, decode_png, encode_png

    info = requests.get(url, timeout=60).json()
    spec = InputSpec(**info["input"])
    if info["family"] == "token_generator":
        route, count = "generate", spec.least
        fields = {"future_frames": min(spec.max_future_frames, len(video) - count),
                  "temperature": 0.0}
    else:
        route, fields = "predict", {}
        count = min(len(video) - spec.frames_per_step, spec.max_context_frames)
        count = max(count, spec.frames_per_step) // spec.frames_per_step * spec.frames_per_step
    sent = time.perf_counter()
    response = requests.post(f"{url}/{route}", timeout=120, json={
        "frames": [encode_png(f) for f in video[:count]], **fields})
    request_ms = (time.perf_counter() - sent) * 1e3
    if response.status_code != 200:
        raise RuntimeError(f"smoke request to {url}/{route} failed: "
                           f"{response.status_code} {response.text[:300]}")
    body = response.json()
    pred = np.stack([decode_png(frame) for frame in body["frames"]])
    out = {"url": f"{url}/{route}", "version": info["version"], "precision": info["precision"],
           "request_ms": request_ms, "context_frames": count,
           "timing_ms": body["timing_ms"], "frames": pred}
    truth = video[count:count + len(pred)]
    if len(truth) == len(pred):
        out["mse"] = float(mse_per_frame(pred[None], truth[None]).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    return run_job("serve", ServeJobConfig, serve_job, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
