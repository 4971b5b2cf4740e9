"""Ray Serve under a bounded load: W8A8 and fp32 side by side, batching on vs off, for the V-BLT
frame predictor (/predict) and the NBP generator (/generate); bf16 where the CPU has it.

    python benchmarks/serve_load.py --quick      # < 5 minutes on 2 cores
    python benchmarks/serve_load.py              # 600 requests at 16 concurrent per row
    python benchmarks/serve_load.py --fp32-model vblt-2d --int8-model vblt-2d-int8@candidate

The real path: the app of serve/app.py (FastAPI ingress, one model deployment per registered model
with @serve.batch) on a local Ray, both models loaded from the MLflow registry, requests as JSON
with base64 PNG context frames over HTTP from a pool of client threads on the same machine.
Without model references it registers, in a private store, a randomly initialised V-BLT `small`
(frames 12x32x32) and its post-training mixed-precision W8A8 quantization (plan from S(W) on one
random batch, as benchmarks/quantize.py does for its paper row): speed does not depend on training.
Rows: each model with batching on, in fp32 compute and (where bf16 is native) in bf16 compute;
then the int8 replica in its faster form reconfigured in place (its own `reconfigure`, through a
handle: the same replica process) to max_batch_size 1 and back, round by round: batching_gain =
req/s on / req/s off for the int8 model, the median of the paired rounds. Then the
same for a random NBP `small` generator and its W8A8 (tokenizer float) on /generate.
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402

FRAME_SHAPE = [12, 32, 32, 1]


def register_pair(fp32, arch: str, name: str) -> tuple[str, str, str]:
    """Register `fp32` as `name` and its post-training mixed-precision W8A8 (plan from S(W) on
    one random batch, as benchmarks/quantize.py does for its untrained rows) as `name`-int8
    @candidate: (fp32 ref, int8 ref, the plan's layer counts). Speed does not depend on
    training."""
    import copy

    import mlflow
    import torch

    from framecast import model_io, tracking
    from framecast.quant.apply import precision_counts, quantize_model
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import plan_records, precision_plan
    from framecast.quant.schedule import QuantConfig, thresholds
    from framecast.quant.sensitivity import weight_sensitivity
    from framecast.train import batch_loss

    tracking.use_experiment("framecast-benchmarks")
    extra = {"frame_shape": FRAME_SHAPE, "preset": "small"}
    with mlflow.start_run(run_name=f"serve-load-{arch}-fp32"):
        model_io.log_model(fp32, arch, registered_name=name, extra=extra)
    quant = copy.deepcopy(fp32)
    linearize(quant)  # patch convolutions are quantized as the linear layers they are
    batch = torch.randint(0, 256, (2, *FRAME_SHAPE), dtype=torch.uint8)
    sens = weight_sensitivity(quant, [batch], batch_loss)
    plan = precision_plan(sens, *thresholds(sens, QuantConfig()))
    quantize_model(quant, plan)
    with mlflow.start_run(run_name=f"serve-load-{arch}-int8"):
        info = model_io.log_model(quant, arch, registered_name=f"{name}-int8", extra={
            **extra, "precision": "w8a8", "quant_plan": plan_records(plan)})
    mlflow.MlflowClient().set_registered_model_alias(f"{name}-int8", "candidate",
                                                     info.registered_model_version)
    counts = {k: v for k, v in precision_counts(quant).items() if k != "fp32"}
    layers = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    return f"{name}@latest", f"{name}-int8@candidate", layers


def register_models() -> tuple[str, str, str]:
    """A random V-BLT small and its W8A8 in the registry: (fp32 ref, int8 ref, a note)."""
    import torch

    from framecast.models import create

    torch.manual_seed(0)
    fp32_ref, int8_ref, layers = register_pair(create("vblt", "small").eval(), "vblt",
                                               "bench-vblt-small")
    return fp32_ref, int8_ref, f"random V-BLT small and its post-training W8A8 ({layers} layers)"


def register_generators() -> tuple[str, str, str]:
    """A random NBP `small` generator with a random `fsq small` tokenizer (12x32x32 clips) and
    its W8A8 (the generator's linears; the tokenizer stays float): (fp32 ref, int8 ref, note).
    Weights drawn larger than at init so tokens are not near-ties."""
    import torch

    from framecast.models import registry

    torch.manual_seed(0)
    fp32 = registry.build("nbp", registry.model_config("nbp", "small", tokenizer="random-fsq"),
                          tokenizer=registry.create("fsq", "small")).eval()
    with torch.no_grad():
        for name, weight in fp32.named_parameters():
            if weight.dim() > 1 and not name.startswith("tokenizer."):
                weight.normal_(0.0, 1.5 / weight.shape[-1] ** 0.5)
    fp32_ref, int8_ref, layers = register_pair(fp32, "nbp", "bench-nbp-small")
    return (fp32_ref, int8_ref, "random NBP small (block 1x8x8) with a random fsq small "
            f"tokenizer, and its post-training W8A8 ({layers} generator layers)")


def load(url: str, body: dict, requests_total: int, concurrency: int, warmup: bool = True
         ) -> dict[str, object]:
    """`requests_total` POSTs of `body`, `concurrency` at a time (after a warm-up of
    2 x concurrency where `warmup`): wall time, client latencies, errors (non-200 or failed),
    the dynamic batches and server timings the server reported (`summary` reduces rounds)."""
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
        if warmup:  # sessions, replica caches
            list(pool.map(one, range(2 * concurrency)))
            latencies.clear()
            batches.clear()
            server.clear()
        start = time.perf_counter()
        list(pool.map(one, range(requests_total)))
        wall = time.perf_counter() - start
    if errors:
        print(f"  {len(errors)} errors, first: {errors[0]}")
    return {"requests": requests_total, "wall": wall, "latencies": latencies,
            "batches": batches, "errors": errors, "server": server}


def round_rps(got: dict) -> float:
    """Successful requests per second of one round of `load`."""
    return (got["requests"] - len(got["errors"])) / got["wall"]


def summary(rounds: list[dict]) -> dict[str, Any]:
    """Rounds of `load` on one deployment as one row: throughput the median round's (the
    machine's speed drifts between rounds; deployments are compared round by round),
    latency percentiles, errors, mean batch and server timings over all rounds."""
    rps = [round_rps(r) for r in rounds]
    lat = np.array([ms for r in rounds for ms in r["latencies"]] or [np.nan])
    batches = [b for r in rounds for b in r["batches"]]
    server = [t for r in rounds for t in r["server"]]
    return {"rps": float(np.median(rps)), "rps_rounds": rps, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
            "errors": sum(len(r["errors"]) for r in rounds),
            "batch": float(np.mean(batches)) if batches else 0.0,
            **{f"server_{k}": float(np.mean([t[k] for t in server])) if server else np.nan
               for k in ("read", "decode", "transport", "queue", "inference", "encode", "total")}}


def run(args: argparse.Namespace) -> tuple[list[list[object]], dict[tuple, dict], list[str]]:
    """Phase 1: the frame predictors (fp32 and int8, batching on; int8 batching off; bf16 where
    native). Phase 2: the NBP generators likewise, on /generate. Rows, results keyed by
    (family, kind, max batch), notes."""
    import torch
    from ray import serve

    from framecast.cluster import init_ray
    from framecast.quant import kernels
    from jobs.serve import free_port

    if args.fp32_model or args.int8_model:
        fp32_ref, int8_ref, note = args.fp32_model, args.int8_model, "models given"
    else:
        fp32_ref, int8_ref, note = register_models()
    refs = {k: v for k, v in {"int8": int8_ref, "fp32": fp32_ref}.items() if v}
    notes = [note]
    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows: list[list[object]] = []
    values: dict[tuple, dict] = {}
    try:
        context = np.random.default_rng(0).integers(
            0, 256, (args.context, *FRAME_SHAPE[1:]), dtype=np.uint8)
        bf16 = kernels.native_16bit(torch.bfloat16)
        extra = [kind for kind in ("fp32", "int8") if bf16 and kind in refs]
        if not bf16:
            notes.append("bf16: not native on this CPU (no amx_bf16 / avx512_bf16), no row")
        phase(args, port, "predict", refs, context, rows, values, extra)
        if not args.no_nbp:
            gen_fp32, gen_int8, gen_note = register_generators()
            notes.append(gen_note)
            phase(args, port, "generate", {"int8": gen_int8, "fp32": gen_fp32},
                  context[:1], rows, values, extra and ["fp32", "int8"])
    finally:
        serve.shutdown()
    return rows, values, notes


def phase(args: argparse.Namespace, port: int, route: str, refs: dict[str, str],
          context: np.ndarray, rows: list, values: dict, bf16_kinds: list[str]) -> None:
    """Deploy `refs` in fp32 compute as one app and load each with batching on; deploy the
    models of `bf16_kinds` in bf16 compute (a second app, where bf16 is native) and load them;
    then the int8 model (or fp32) in its faster compute form reconfigured in place to max batch
    1 and back, round by round.
    Results keyed (route, kind, compute, max batch)."""
    import requests
    from ray import serve

    from framecast.tracking import default_tracking_uri
    from serve.app import build_app
    from serve.codec import encode_png

    def app(kinds: list[str], batch: int, precision: str) -> object:
        models = [{"name": refs[k].partition("@")[0],
                   "alias": refs[k].partition("@")[2] or "latest",
                   "max_batch_size": batch, "batch_wait_timeout_s": args.batch_wait_ms / 1e3,
                   "num_cpus": 0.5 if precision == "fp32" else 0.25,
                   "torch_threads": args.torch_threads, "precision": precision}
                  for k in kinds]
        return build_app({"models": models, "tracking_uri": default_tracking_uri(),
                          **({} if precision == "fp32" else {"ingress_cpus": 0.0})})

    body = {"frames": [encode_png(f) for f in context]}
    if route == "generate":
        body.update(future_frames=FRAME_SHAPE[0] - len(context), temperature=1.0, top_k=50)

    def label(kind: str, prefix: str) -> tuple[str, str, str]:
        """The model's name, what it stores and computes in, and how many of its W8A8 layer
        forms (per token class) the replica chose in int8."""
        name = refs[kind].partition("@")[0]
        info = requests.get(f"http://127.0.0.1:{port}{prefix}v1/models/{name}", timeout=60).json()
        forms = [f for layer in info.get("layer_forms", {}).values() for f in layer.values()]
        int8 = f"{forms.count('int8')} of {len(forms)}" if forms else "none"
        return name, f"{info['precision']}, {info['compute']} compute", int8

    def measure(targets: list[tuple[str, str, str]], batch: int) -> None:
        """Load each (kind, precision, prefix) in `rounds` rounds, the deployments alternated
        (order reversed every other round), requests split over the rounds."""
        rounds = max(1, min(args.rounds, args.requests // args.concurrency))
        per_round = args.requests // rounds
        parts: dict[tuple, list[dict]] = {t: [] for t in targets}
        # Every deployment warmed before any round is timed, and (with an even --rounds) each
        # leading as often: the one leading round 1 read 0.79x the other there and 1.10x in
        # round 2, and with 3 rounds the first deployment led twice (benchmarks/RESULTS.md,
        # the note on emulated ISAs). A slow round can remain; the median of 4 leaves it out.
        for kind, _, prefix in targets:
            warm(kind, prefix)
        for r in range(rounds):
            for kind, precision, prefix in targets if r % 2 == 0 else targets[::-1]:
                parts[kind, precision, prefix].append(
                    one_round(kind, prefix, f"max batch {batch}, round {r + 1}/{rounds}",
                              per_round, warmup=False))
        for (kind, precision, prefix), got in parts.items():
            record(kind, precision, prefix, batch, got)

    def url(kind: str, prefix: str) -> str:  # the name from the reference: no request
        return f"http://127.0.0.1:{port}{prefix}v1/models/{refs[kind].partition('@')[0]}/{route}"

    def warm(kind: str, prefix: str) -> None:
        """`load`'s warm-up alone (2 x concurrency requests, untimed) on one deployment."""
        load(url(kind, prefix), body, 0, args.concurrency, warmup=True)

    def one_round(kind: str, prefix: str, what_round: str, requests_total: int,
                  warmup: bool) -> dict:
        """`load` on one deployment, announced and its req/s printed."""
        name, what, _ = label(kind, prefix)
        print(f"serve_load: {name} ({what}) /{route}, {what_round}: {requests_total} requests "
              f"at {args.concurrency} concurrent")
        got = load(url(kind, prefix), body, requests_total, args.concurrency, warmup=warmup)
        print(f"serve_load:   {round_rps(got):.1f} req/s")
        return got

    def record(kind: str, precision: str, prefix: str, batch: int, got: list[dict]) -> None:
        """One row of the table and `values` from a deployment's rounds at `batch`."""
        name, what, int8 = label(kind, prefix)
        result = summary(got)
        per_item = model_ms(result)
        rows.append([name, route, what, batch, sum(r["requests"] for r in got),
                     args.concurrency, result["rps"], result["p50"], result["p95"],
                     result["p99"], result["errors"], result["batch"], per_item, int8])
        values[(route, kind, precision, batch)] = result

    serve.run(app(list(refs), args.max_batch, "fp32"), name="serve-load", route_prefix="/")
    targets = [(kind, "fp32", "/") for kind in refs]
    if bf16_kinds:
        serve.run(app(bf16_kinds, args.max_batch, "bf16"), name="serve-load-bf16",
                  route_prefix="/bf16")
        targets += [(kind, "bf16", "/bf16/") for kind in bf16_kinds]
    measure(targets, args.max_batch)
    # Batching off against on for the int8 model (fp32 without one) in its faster compute
    # form, round by round, so a drift of the machine's speed hits both. Measured after all
    # the other rows instead, the batch-1 row once read a gain of 1.18 where the rounds of the
    # same run paired read 1.4-1.6 (benchmarks/RESULTS.md, issue 31).
    kind = "int8" if "int8" in refs else "fp32"
    compute = max(("fp32", "bf16"), key=lambda c: values.get((route, kind, c, args.max_batch),
                                                             {"rps": -1.0})["rps"])
    replica = serve.get_deployment_handle(
        refs[kind].partition("@")[0], app_name="serve-load" if compute == "fp32" else
        "serve-load-bf16")

    def set_batch(batch: int) -> None:
        """The one replica's own `reconfigure`, called through a handle: the same process,
        model and measured layer forms with batching off and on. A `serve.run` with a new
        user_config restarts the replicas (Serve updates them in place only for `serve
        deploy` of a config): each round then met a cold replica (its layer forms measured
        anew, 12-18 req/s where a warm one gave 25), and each restart cost 20-25 s."""
        replica.reconfigure.remote({"max_batch_size": batch,
                                    "batch_wait_timeout_s": args.batch_wait_ms / 1e3}).result()
    prefix = "/" if compute == "fp32" else "/bf16/"
    rounds = max(1, min(args.rounds, args.requests // args.concurrency))
    per_round = args.requests // rounds
    paired: dict[int, list[dict]] = {1: [], args.max_batch: []}
    current = args.max_batch
    for r in range(rounds):
        for batch in (1, args.max_batch) if r % 2 == 0 else (args.max_batch, 1):
            if batch != current:  # off, on | on, off | ...: one reconfiguration per round
                set_batch(batch)
                current = batch
            paired[batch].append(one_round(
                kind, prefix, f"max batch {batch} (batching gain), round {r + 1}/{rounds}",
                per_round, warmup=r == 0 and batch == 1))
    record(kind, compute, prefix, 1, paired[1])
    values[(route, kind, compute, "paired with batch 1")] = summary(paired[args.max_batch])
    if bf16_kinds:
        serve.delete("serve-load-bf16")


def faster(values: dict[tuple, dict], route: str, kind: str, batch: int) -> dict | None:
    """The result of `kind`'s faster compute form at `batch`: what `precision: auto` deploys."""
    found = [v for k, v in values.items() if k[:2] == (route, kind) and k[3] == batch]
    return max(found, key=lambda r: r["rps"]) if found else None


def model_ms(result: dict) -> float:
    """The replica's model time per request in its batches (ms): where the replica is
    compute-bound, batch 1's over the batched one's bounds the served batching gain."""
    return result["server_inference"] / max(result["batch"], 1.0)


def paired_ratio(a: dict, b: dict) -> float:
    """a's req/s over b's, round by round (the two were loaded one after the other in each
    round, so a drift of the machine's speed between rounds hits both), the median round."""
    from framecast.quant.compare import paired_ratio as median_round_ratio

    return median_round_ratio(a["rps_rounds"], b["rps_rounds"])


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per row (default 600; 192 with --quick)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per row, the deployments alternated and their order "
                        "reversed every other round (an even number: each leads as often), "
                        "the median kept")
    parser.add_argument("--context", type=int, default=10,
                        help="context frames per request (default 10: 12 with the step)")
    parser.add_argument("--max-batch", type=int, default=8, help="max batch, batching on")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="batch wait")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--fp32-model", default="", help="registered fp32 model name[@alias]")
    parser.add_argument("--int8-model", default="", help="registered int8 model name[@alias]")
    parser.add_argument("--no-nbp", action="store_true", help="skip the NBP /generate rows")
    args = parser.parse_args()
    args.requests = args.requests or (192 if args.quick else 600)

    with tempfile.TemporaryDirectory() as tmp:
        if not (args.fp32_model or args.int8_model):
            os.environ["FRAMECAST_HOME"] = tmp  # benchmark models stay out of the user's store
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        rows, values, notes = run(args)
    table = markdown_table(["model", "route", "stored, compute", "max batch", "requests",
                            "concurrent", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                            "mean batch", "model ms/request", "W8A8 layer forms in int8"],
                           rows)
    result: dict[str, object] = {}
    for route, suffix in (("predict", ""), ("generate", "_nbp")):
        if not any(key[0] == route for key in values):
            continue

        on, fp32 = faster(values, route, "int8", args.max_batch), values.get(
            (route, "fp32", "fp32", args.max_batch))
        best_float = faster(values, route, "fp32", args.max_batch)
        gain_model = "int8" if on else "fp32"
        off = faster(values, route, gain_model, 1)
        base = faster(values, route, gain_model, "paired with batch 1")
        result.update({f"rps_int8{suffix}": on["rps"] if on else "missing",
                       f"rps_fp32{suffix}": fp32["rps"] if fp32 else "missing",
                       f"rps_best_float{suffix}": best_float["rps"] if best_float else "missing",
                       f"rps_int8_vs_best_float{suffix}": paired_ratio(on, best_float)
                       if on and best_float else "missing",
                       f"p95_ms_int8{suffix}": on["p95"] if on else "missing",
                       f"batching_gain{suffix}": paired_ratio(base, off)
                       if off and base and off["rps"] else "missing",
                       f"model_batching_gain{suffix}": model_ms(off) / model_ms(base)
                       if off and base and model_ms(base) > 0 else "missing"})
        bf16 = values.get((route, "fp32", "bf16", args.max_batch))
        if bf16:
            result[f"rps_bf16{suffix}"] = bf16["rps"]
    result["errors"] = sum(int(v["errors"]) for v in values.values())
    text = (f"{'; '.join(notes)}. /predict requests: {args.context} context frames of "
            f"{FRAME_SHAPE[1]}x{FRAME_SHAPE[2]} as base64 PNGs in JSON, answered with the next "
            f"2 frames and entropy maps. /generate requests: 1 context frame, 11 frames "
            f"generated (temperature 1, top-k 50; 11 block steps, tokenizer included), "
            f"answered as PNGs. One replica per model (0.5 CPU, {args.torch_threads} torch "
            f"thread), ingress 0.25 CPU, client threads on the same {os.cpu_count()} cores; "
            f"latency is client-side, after a warm-up of {2 * args.concurrency} requests; "
            f"each row's requests in {args.rounds} rounds, the batching-on deployments "
            f"alternated round by round, req/s of the median round, percentiles over all. "
            f"Each model served in fp32 compute and, where bf16 is native, in bf16 compute "
            f"(asked explicitly, `precision: bf16`: a quantized model keeps its int8 weights "
            f"and runs the rest in bf16; `precision: auto` deploys the faster of the two per "
            f"batch size, for a quantized model once jobs.quantize found its bf16 form "
            f"within 0.3 dB). "
            f"rps_int8 and rps_best_float: the faster compute form of each. "
            f"Batching gain: req/s at max batch {args.max_batch} over max batch 1 (the int8 "
            f"replica, in its faster compute form, reconfigured in place (the same replica "
            f"process) to one and back each "
            f"round; the median of the rounds' ratios). 'model ms/request': the "
            f"replica's model time per request in its batch; when it does not fall with the "
            f"batch, batching cannot raise throughput (compute-bound on CPU); "
            f"model_batching_gain: batch 1's over the batched one's, from the same paired "
            f"rounds, the bound on the served gain of a compute-bound replica. 'W8A8 layer "
            f"forms in int8': of the (layer, token class) forms the replica measured and "
            f"kept (/v1/models layer_forms), how many compute in int8 (the rest in float "
            f"from the int8 weights).")
    report("serve_load", "Ray Serve HTTP load: V-BLT and NBP, W8A8 vs fp32, batching on vs off",
           table, text, f"RESULT serve_load {key_values(result)}")


if __name__ == "__main__":
    main()
