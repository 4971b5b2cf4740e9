"""Training on a stream (`jobs.train --stream`) against training on a pre-rendered set.

    python benchmarks/stream_train.py --quick      # ~4 minutes on 2 cores
    python benchmarks/stream_train.py --actors 1 2 4 --preset demo --steps 200

Runs the real job (`jobs.train.train`, Ray Train, one worker) on the same data set: once reading
its pre-rendered train split, then with --stream and 1, 2, ... render actors feeding the worker.
Steps/s are read from the run's logged loss timestamps after a warm-up (the first fifth of the
steps), so Ray Train's start-up does not count. `stream_vs_rendered` near 1 means the render
actors keep the trainer busy; the smallest actor count that gets there answers "how many render
actors per trainer". On one machine the actors and the trainer share the same cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from jobs.render import RenderJobConfig, render
from jobs.train import TrainJobConfig, train


def steps_per_s(run_id: str, steps: int) -> float:
    """Steps/s between the end of the warm-up (a fifth of the steps) and the last step."""
    import mlflow

    history = sorted(mlflow.MlflowClient().get_metric_history(run_id, "loss"),
                     key=lambda m: m.step)
    first = next(m for m in history if m.step >= max(1, steps // 5))
    last = history[-1]
    return (last.step - first.step) / max((last.timestamp - first.timestamp) / 1000, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 60 steps")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2],
                        help="render actor counts to try")
    parser.add_argument("--preset", default=None, help="model preset (default demo; tiny with "
                        "--quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 200; "
                        "60 with --quick)")
    args = parser.parse_args()
    preset = args.preset or ("tiny" if args.quick else "demo")
    steps = args.steps or (60 if args.quick else 200)
    batch = 8

    from framecast.cluster import init_ray, total_cpus

    init_ray()
    rows, values = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "2d"
        render(RenderJobConfig(kind="2d", num_sequences=160, frames=12, size=16, out=str(data),
                               mlflow=False))
        base = {"data": str(data), "preset": preset, "steps": steps, "batch_size": batch,
                "log_every": 1, "checkpoint_every": steps, "eval_every": steps,
                "eval_sequences": 4, "register": "none", "storage": str(Path(tmp) / "ray")}
        rendered = steps_per_s(train(TrainJobConfig(**base))["run_id"], steps)
        rows.append(["pre-rendered train split", "-", rendered, 1.0])
        print(f"pre-rendered: {rendered:.2f} steps/s", flush=True)
        values["rendered_steps_per_s"] = rendered
        for actors in args.actors:
            rate = steps_per_s(train(TrainJobConfig(**base, stream=True,
                                                    stream_actors=actors))["run_id"], steps)
            rows.append(["stream", actors, rate, rate / rendered])
            print(f"stream, {actors} render actor(s): {rate:.2f} steps/s", flush=True)
            values[f"stream_steps_per_s_a{actors}"] = rate
            values[f"stream_vs_rendered_a{actors}"] = rate / rendered
        cpus = total_cpus()
    table = markdown_table(["train source", "render actors", "steps/s", "vs pre-rendered"],
                           rows)
    notes = (f"V-BLT `{preset}`, one Ray Train worker, batch {batch} of 12 frames of 16x16 2D "
             f"triangles, {steps} steps, steps/s after the first {steps // 5}; local Ray with "
             f"{cpus:g} CPUs: the render actors share the CPUs the worker leaves (one), on the "
             "same cores as the trainer. A streamed sequence is rendered once and used once.")
    report("stream_train", "training on a stream vs a pre-rendered set", table, notes,
           f"RESULT stream_train {key_values(values)}")


if __name__ == "__main__":
    main()
