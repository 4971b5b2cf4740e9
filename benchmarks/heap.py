"""What keeping freed memory in the process (framecast.heap) is worth: training steps and Serve's
batched /predict forward, with glibc's default malloc against the setting, side by side.

    python benchmarks/heap.py [--quick] [--rounds N]

Each measurement runs in a fresh interpreter (the setting is process-wide; the jobs and Serve
replicas set it at start), the two settings alternated round by round, the median round kept:
- train: one optimizer step (forward, 256-way cross-entropy, backward, AdamW) of V-BLT `small`
  and UNet-3D `small` at batch 8 on 12x32x32 clips, 2 torch threads (jobs.train's loop);
- predict: Serve's /predict work (`serve.inference.predict_steps`: next-step logits, frames,
  entropy maps) of V-BLT `small` at batch 1 and 8, 1 torch thread as a replica runs it, in bf16
  where the CPU computes it natively (what `precision: auto` deploys there), else fp32.
Also counted: minor page faults (pages the kernel had to hand back in) and kernel CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]  # run as a script from anywhere

from benchmarks.lib.cli import new_parser  # noqa: E402

CASES = ("train vblt", "train unet3d", "predict 1", "predict 8")


def measure(case: str, reps: int) -> dict[str, float]:
    """Run `case` in this process (heap setting as the environment says): ms per step (train)
    or per request (predict), minor faults and kernel ms per the same unit."""
    import numpy as np
    import torch

    from framecast.heap import keep_freed_memory
    from framecast.models import create

    kept = keep_freed_memory()
    torch.manual_seed(0)
    kind, arg = case.split()
    if kind == "train":
        from framecast.train import batch_loss

        torch.set_num_threads(2)
        model = create(arg, "small")
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        video = torch.randint(0, 256, (8, 12, 32, 32, 1), dtype=torch.uint8)

        def unit() -> None:
            loss = batch_loss(model, video)
            opt.zero_grad()
            loss.backward()
            opt.step()
        per = 1
    else:
        from framecast.quant import compute_form
        from serve.inference import predict_steps

        torch.set_num_threads(1)
        form = compute_form.available()[-1]
        model = compute_form.in_form(create("vblt", "small").eval(), form, copy_model=False)
        batch = int(arg)
        contexts = [np.zeros((10, 32, 32, 1), np.uint8)] * batch

        def unit() -> None:
            with torch.inference_mode():
                predict_steps(model, contexts)
        per = batch
        reps = max(1, reps * 8 // batch)  # as many requests at either batch size
    for _ in range(2):
        unit()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(reps):
        unit()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = reps * per
    return {"kept": float(kept), "ms": wall * 1e3 / n,
            "faults": (after.ru_minflt - before.ru_minflt) / n,
            "sys_ms": (after.ru_stime - before.ru_stime) * 1e3 / n,
            "form": 0.0 if kind == "train" else float(form == "bf16")}


def run_case(case: str, keep: bool, reps: int) -> dict[str, float]:
    from framecast.heap import worker_env

    # kept: as a Train worker or Serve replica gets it (environment at start, then the call)
    env = {**os.environ, "FRAMECAST_KEEP_FREED_MEMORY": "1" if keep else "0",
           **(worker_env() if keep else {"GLIBC_TUNABLES": ""})}
    out = subprocess.run([sys.executable, __file__, "--worker", case, "--reps", str(reps)],
                         capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds, the two settings alternated (default 5; 3 with --quick)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=6, help="steps (or batches of 8) timed per "
                        "process (default 6; 4 with --quick)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.reps)))
        return
    rounds = args.rounds or (3 if args.quick else 5)
    reps = 4 if args.quick else args.reps
    got: dict[tuple[str, bool], list[dict]] = {}
    for r in range(rounds):
        for case in CASES:
            for keep in (False, True) if r % 2 == 0 else (True, False):
                got.setdefault((case, keep), []).append(res := run_case(case, keep, reps))
                print(f"heap: round {r + 1}/{rounds} {case:13s} {'kept' if keep else 'default'}"
                      f" {res['ms']:.1f} ms, {res['faults']:.0f} faults", flush=True)

    from benchmarks.lib.report import key_values, markdown_table, report

    def med(case: str, keep: bool, key: str) -> float:
        return float(sorted(m[key] for m in got[case, keep])[len(got[case, keep]) // 2])

    rows, result = [], {}
    for case in CASES:
        default, kept = med(case, False, "ms"), med(case, True, "ms")
        unit = "step" if case.startswith("train") else "request"
        rows.append([case, unit, default, kept, default / kept, med(case, False, "faults"),
                     med(case, True, "faults"), med(case, False, "sys_ms"),
                     med(case, True, "sys_ms")])
        result[f"speedup_{case.replace(' ', '_')}"] = default / kept
    gains = {keep: med("predict 1", keep, "ms") / med("predict 8", keep, "ms")
             for keep in (False, True)}
    result.update(batching_gain_default=gains[False], batching_gain_kept=gains[True],
                  kept_in_force=int(all(m["kept"] for (_, k), ms in got.items() if k for m in ms)))
    form = "bf16" if got["predict 1", True][0]["form"] else "fp32"
    table = markdown_table(["case", "per", "ms default malloc", "ms freed memory kept",
                            "speed-up", "faults default", "faults kept", "kernel ms default",
                            "kernel ms kept"], rows)
    notes = (f"framecast.heap (glibc: one arena, mmap threshold 1 GiB, trim threshold 1 GiB, "
             f"from the process's start as Train workers and Serve replicas get it) against "
             f"glibc's defaults. train: one AdamW step at batch 8, 12x32x32, "
             f"2 threads; predict N: Serve's /predict forward (next 2 frames, entropy maps) of "
             f"V-BLT small in {form} at batch N, 1 thread, per request. Each cell: a fresh "
             f"process, {reps} steps (or batches making {reps * 8} requests) after 2 warm-up, "
             f"median of {rounds} rounds, settings alternated. Faults: minor page faults per "
             f"step or request; kernel ms: system CPU time. Batching gain on the model alone "
             f"(ms per request at batch 1 / batch 8): {gains[False]:.2f} with the default "
             f"malloc, {gains[True]:.2f} with freed memory kept.")
    report("heap", "freed memory kept in the process vs glibc's default malloc", table, notes,
           f"RESULT heap {key_values(result)}")


if __name__ == "__main__":
    main()
