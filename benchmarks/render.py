"""Rendering throughput: one warm plotter, and the Ray Data job with 1, 2, ... workers.

    python benchmarks/render.py --quick            # < 5 minutes on 2 cores
    python benchmarks/render.py --workers 1 2 4 8 16 --num-sequences 4000   # a bigger machine

Measures the real path: `jobs.render.render_to_staging` (Ray Data actors with warm plotters,
Parquet shards) plus the manifest check, end to end, actor start-up included. The single-worker
figure without Ray shows what one warm plotter does on its own.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from framecast import data as fdata
from framecast.render.scene import SequenceRenderer
from framecast.render.spec import RenderConfig
from jobs.render import RenderJobConfig, render_to_staging


def warm_plotter_rate(kind: str, count: int) -> float:
    """Sequences/s of one SequenceRenderer after its plotter is warm (no Ray, no I/O)."""
    renderer = SequenceRenderer(RenderConfig(kind=kind))
    try:
        renderer.render(0)
        start = time.perf_counter()
        for i in range(1, count + 1):
            renderer.render(i)
        return count / (time.perf_counter() - start)
    finally:
        renderer.close()


def ray_job_seconds(kind: str, workers: int, n: int, root: Path) -> float:
    """Wall time of the job's path for n sequences: Ray Data render + Parquet + manifest check."""
    config = RenderJobConfig(kind=kind, num_sequences=n, workers=workers, mlflow=False)
    staging = root / f"{kind}-w{workers}-n{n}"
    start = time.perf_counter()
    render_to_staging(config, staging)
    fdata.build_manifest(staging, config.data_config, 0.0)
    seconds = time.perf_counter() - start
    shutil.rmtree(staging)
    return seconds


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="small N: under 5 minutes")
    parser.add_argument("--num-sequences", type=int, default=None,
                        help="sequences per Ray run (default 4000; 960 with --quick)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (the first is the baseline)")
    args = parser.parse_args()
    n = args.num_sequences or (960 if args.quick else 4000)

    from framecast.cluster import init_ray

    init_ray()
    rows, values = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("2d", "3d"):
            warm = warm_plotter_rate(kind, 60 if args.quick else 200)
            rows.append([kind, "1 warm plotter, no Ray", "-", "-", warm, "-"])
            rates = {}
            for w in args.workers:
                seconds = ray_job_seconds(kind, w, n, Path(tmp))
                rates[w] = n / seconds
                rows.append([kind, f"Ray Data job, {w} worker(s)", n, seconds, rates[w],
                             rates[w] / rates[args.workers[0]]])
                print(f"{kind} workers={w}: {rates[w]:.1f} sequences/s", flush=True)
            top = args.workers[-1]
            values[f"seq_per_s_{kind}"] = warm
            values[f"ray_seq_per_s_{kind}_w{top}"] = rates[top]
            values[f"scaling_{kind}"] = rates[top] / rates[args.workers[0]]
    table = markdown_table(["kind", "what", "N", "seconds", "sequences/s",
                            f"vs {args.workers[0]} worker"], rows)
    notes = (f"12 frames of 64x64, 1 channel. Ray rows time the job's whole path end to end: "
             f"Ray Data actor start-up (a few seconds, fixed), rendering, Parquet write and the "
             f"manifest check. `scaling_*` = Ray rate with {args.workers[-1]} workers / with "
             f"{args.workers[0]}; `seq_per_s_*` = one warm plotter alone.")
    report("render", "rendering throughput", table, notes, f"RESULT render {key_values(values)}")


if __name__ == "__main__":
    main()
