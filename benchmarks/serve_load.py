"""Ray Serve under a bounded load: the W8A8 and the fp32 V-BLT side by side, batching on vs off.

    python benchmarks/serve_load.py --quick      # < 5 minutes on 2 cores
    python benchmarks/serve_load.py              # 500 requests at 16 concurrent per row
    python benchmarks/serve_load.py --fp32-model vblt-2d --int8-model vblt-2d-int8@candidate

The real path: the app of serve/app.py (FastAPI ingress, one model deployment per registered model
with @serve.batch) on a local Ray, both models loaded from the MLflow registry, requests as JSON
with base64 PNG context frames over HTTP from a pool of client threads on the same machine.
Without model references it registers, in a private store, a randomly initialised V-BLT `small`
(frames 12x32x32) and its post-training mixed-precision W8A8 quantization (plan from S(W) on one
random batch, as benchmarks/quantize.py does for its paper row): speed does not depend on training.
Rows: each model with batching on; then the int8 replica reconfigured live (user_config) to
max_batch_size 1, batching off. batching_gain = req/s on / req/s off for the int8 model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402

FRAME_SHAPE = [12, 32, 32, 1]


def register_models() -> tuple[str, str | None, str]:
    """A random V-BLT small (fp32) and its W8A8 version in the registry: (fp32 ref, int8 ref or
    None when quantization is unavailable, a note)."""
    import mlflow
    import torch

    from framecast import model_io, tracking
    from framecast.models import create

    tracking.use_experiment("framecast-benchmarks")
    torch.manual_seed(0)
    fp32 = create("vblt", "small").eval()
    extra = {"frame_shape": FRAME_SHAPE, "preset": "small"}
    with mlflow.start_run(run_name="serve-load-fp32"):
        model_io.log_model(fp32, "vblt", registered_name="bench-vblt-small", extra=extra)
    try:
        from framecast.quant.apply import quantize_model
        from framecast.quant.gemm_form import linearize
        from framecast.quant.plan import plan_records, precision_plan
        from framecast.quant.schedule import QuantConfig, thresholds
        from framecast.quant.sensitivity import weight_sensitivity
        from framecast.train import batch_loss
    except ImportError as err:
        return "bench-vblt-small@latest", None, f"int8 missing: quantization unavailable ({err})"
    quant = create("vblt", "small")
    quant.load_state_dict(fp32.state_dict())
    linearize(quant)
    batch = torch.randint(0, 256, (2, *FRAME_SHAPE), dtype=torch.uint8)
    sens = weight_sensitivity(quant, [batch], batch_loss)
    plan = precision_plan(sens, *thresholds(sens, QuantConfig()))
    quantize_model(quant, plan)
    with mlflow.start_run(run_name="serve-load-int8"):
        info = model_io.log_model(quant, "vblt", registered_name="bench-vblt-small-int8", extra={
            **extra, "precision": "w8a8", "quant_plan": plan_records(plan)})
    mlflow.MlflowClient().set_registered_model_alias("bench-vblt-small-int8", "candidate",
                                                     info.registered_model_version)
    counts: dict[str, int] = {}
    for entry in plan:
        counts[entry.precision.value] = counts.get(entry.precision.value, 0) + 1
    note = ("random V-BLT small and its post-training W8A8 "
            f"({', '.join(f'{n} {p}' for p, n in sorted(counts.items()))} layers)")
    return "bench-vblt-small@latest", "bench-vblt-small-int8@candidate", note


def load(url: str, body: dict, requests_total: int, concurrency: int) -> dict[str, float]:
    """`requests_total` POSTs of `body`, `concurrency` at a time; throughput, latency percentiles,
    errors (non-200 or failed) and the mean dynamic batch the server reported."""
    import requests

    local = threading.local()
    latencies, batches, errors, server = [], [], [], []

    def one(_: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        try:
            response = session.post(url, json=body, timeout=120)
            ok = response.status_code == 200
            if ok:
                answer = response.json()
                batches.extend(answer["batch_sizes"])
                server.append(answer["timing_ms"])
            else:
                errors.append(f"{response.status_code} {response.text[:120]}")
        except requests.RequestException as err:
            ok = False
            errors.append(str(err)[:120])
        if ok:
            latencies.append((time.perf_counter() - start) * 1e3)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(2 * concurrency)))  # warm-up: sessions, replica caches
        latencies.clear()
        batches.clear()
        server.clear()
        start = time.perf_counter()
        list(pool.map(one, range(requests_total)))
        wall = time.perf_counter() - start
    if errors:
        print(f"  {len(errors)} errors, first: {errors[0]}")
    lat = np.array(latencies or [np.nan])
    return {"rps": (requests_total - len(errors)) / wall, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
            "errors": len(errors), "batch": float(np.mean(batches)) if batches else 0.0,
            **{f"server_{k}": float(np.mean([t[k] for t in server])) if server else np.nan
               for k in ("read", "decode", "transport", "queue", "inference", "encode", "total")}}


def run(args: argparse.Namespace) -> tuple[list[list[object]], dict[str, object], str]:
    from ray import serve

    from framecast.cluster import init_ray
    from framecast.tracking import default_tracking_uri
    from jobs.serve import free_port
    from serve.app import build_app
    from serve.codec import encode_png

    if args.fp32_model or args.int8_model:
        fp32_ref, int8_ref, note = args.fp32_model, args.int8_model, "models given"
    else:
        fp32_ref, int8_ref, note = register_models()
    refs = {"int8": int8_ref, "fp32": fp32_ref}
    refs = {k: v for k, v in refs.items() if v}

    def app(batch: int) -> object:
        models = [{"name": ref.partition("@")[0], "alias": ref.partition("@")[2] or "latest",
                   "max_batch_size": batch, "batch_wait_timeout_s": args.batch_wait_ms / 1e3,
                   "num_cpus": 0.5, "torch_threads": args.torch_threads}
                  for ref in refs.values()]
        return build_app({"models": models, "tracking_uri": default_tracking_uri()})

    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows, values = [], {}
    try:
        serve.run(app(args.max_batch), name="serve-load", route_prefix="/")
        import requests

        info = {m["name"]: m for m in requests.get(f"http://127.0.0.1:{port}/v1/models",
                                                   timeout=60).json()["models"]}
        context = np.random.default_rng(0).integers(
            0, 256, (args.context, *FRAME_SHAPE[1:]), dtype=np.uint8)
        body = {"frames": [encode_png(f) for f in context]}
        plan = [(kind, args.max_batch) for kind in refs]
        plan.append(("int8" if "int8" in refs else "fp32", 1))
        for kind, batch in plan:
            name = refs[kind].partition("@")[0]
            if batch == 1:  # reconfigure live: only user_config changes, replicas stay
                serve.run(app(1), name="serve-load", route_prefix="/")
            print(f"serve_load: {name} ({info[name]['precision']}), max batch {batch}: "
                  f"{args.requests} requests at {args.concurrency} concurrent")
            result = load(f"http://127.0.0.1:{port}/v1/models/{name}/predict", body,
                          args.requests, args.concurrency)
            per_item = result["server_inference"] / max(result["batch"], 1.0)
            rows.append([name, info[name]["precision"], batch, args.requests, args.concurrency,
                         result["rps"], result["p50"], result["p95"], result["p99"],
                         result["errors"], result["batch"], per_item])
            values[(kind, batch)] = result
    finally:
        serve.shutdown()
    return rows, values, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per row (default 500; 150 with --quick)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--context", type=int, default=10,
                        help="context frames per request (default 10: 12 with the step)")
    parser.add_argument("--max-batch", type=int, default=8, help="max batch, batching on")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="batch wait")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--fp32-model", default="", help="registered fp32 model name[@alias]")
    parser.add_argument("--int8-model", default="", help="registered int8 model name[@alias]")
    args = parser.parse_args()
    args.requests = args.requests or (150 if args.quick else 500)

    with tempfile.TemporaryDirectory() as tmp:
        if not (args.fp32_model or args.int8_model):
            os.environ["FRAMECAST_HOME"] = tmp  # benchmark models stay out of the user's store
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows, values, note = run(args)
    table = markdown_table(["model", "precision", "max batch", "requests", "concurrent",
                            "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "mean batch",
                            "forward ms/request"], rows)
    on = values.get(("int8", args.max_batch))
    off = values.get(("int8", 1)) or values.get(("fp32", 1))
    gain_model = "int8" if ("int8", 1) in values else "fp32"
    base = values.get((gain_model, args.max_batch))
    notes = (f"{note}. Each request: {args.context} context frames of "
             f"{FRAME_SHAPE[1]}x{FRAME_SHAPE[2]} as base64 PNGs in JSON, answered with the next "
             f"2 frames and entropy maps. One replica per model (0.5 CPU, {args.torch_threads} "
             f"torch thread), ingress 0.25 CPU, client threads on the same {os.cpu_count()} "
             f"cores; latency is client-side, after a warm-up of {2 * args.concurrency} requests. "
             f"Batching gain: the {gain_model} model's req/s at max batch {args.max_batch} over "
             f"max batch 1 (the same replica reconfigured live). 'forward ms/request': the "
             f"replica's forward pass time per request in its batch; when it does not fall with "
             f"the batch, batching cannot raise throughput (compute-bound on CPU).")
    errors = sum(int(v["errors"]) for v in values.values())
    result = {"rps_int8": on["rps"] if on else "missing",
              "rps_fp32": values[("fp32", args.max_batch)]["rps"],
              "p95_ms_int8": on["p95"] if on else "missing", "errors": errors,
              "batching_gain": base["rps"] / off["rps"] if off and off["rps"] else "missing"}
    report("serve_load", "Ray Serve HTTP load, W8A8 vs fp32, batching on vs off", table, notes,
           f"RESULT serve_load {key_values(result)}")


if __name__ == "__main__":
    main()
