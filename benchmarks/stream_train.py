"""Training on a stream (`jobs.train --stream`) against training on a pre-rendered set.

    python benchmarks/stream_train.py --quick             # ~4 minutes on 2 cores
    python benchmarks/stream_train.py --quick --cluster   # the same on a 2-node cluster
    python benchmarks/stream_train.py --actors 1 2 4 --preset demo --steps 200 --kind 3d

Runs the real job (`jobs.train.train`, Ray Train, one worker) on the same data set: once reading
its pre-rendered train split, then with --stream and 1, 2, ... render actors feeding the worker.
Steps/s are read from the run's logged loss timestamps after a warm-up (the first fifth of the
steps), so Ray Train's start-up does not count. `stream_vs_rendered` near 1 means the render
actors keep the trainer busy; the smallest actor count that gets there answers "how many render
actors per trainer".

It also times one render actor's work alone (the stream's renderer on sequences of the same
config, in a task where the actors run) and sets it against what the pre-rendered trainer
consumes: `actors_per_trainer` = trainer sequences/s / one actor's sequences/s, the number of
render actors (each a core) one such trainer needs. That sizes a cluster for a faster trainer
too: scale by its sequences/s.

Without --cluster: a local Ray on this machine; actors and trainer share the same cores.
With --cluster: a Ray cluster of two nodes on this machine (ray.cluster_utils), each pinned to
cores of its own as separate machines would be: a trainer node (1 core, 1 CPU, a `trainer`
slot the training worker asks for) and a render node (the other cores). The trainer's one CPU is
the worker's, so render actors can only go to the render node; where each ran is read back from
Ray (MLflow's node tag for the worker, the state API for the actors) and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from jobs.render import RenderJobConfig, render  # noqa: E402
from jobs.train import TrainJobConfig, train  # noqa: E402

BATCH = 8


def steps_per_s(run_id: str, steps: int) -> float:
    """Steps/s between the end of the warm-up (a fifth of the steps) and the last step."""
    import mlflow

    history = sorted(mlflow.MlflowClient().get_metric_history(run_id, "loss"),
                     key=lambda m: m.step)
    first = next(m for m in history if m.step >= max(1, steps // 5))
    last = history[-1]
    return (last.step - first.step) / max((last.timestamp - first.timestamp) / 1000, 1e-9)


def render_rate(data: Path, sequences: int, resources: dict[str, float]) -> float:
    """Sequences/s of one render actor's work: the stream's renderer (warm) on `sequences`
    fresh indices of `data`'s render config, in one task placed like an actor (`resources`)."""
    import ray

    from framecast import data as fdata
    from framecast.config import to_dict

    config = to_dict(fdata.read_manifest(data).config)

    @ray.remote(num_cpus=1, resources=resources)
    def timed() -> float:
        renderer = fdata.StreamRenderer(config)
        first = config["num_sequences"]
        renderer({"data": [first]})  # warm: the plotter and the imports
        start = time.perf_counter()
        for i in range(1, sequences + 1, BATCH):
            renderer({"data": list(range(first + i, first + min(i + BATCH, sequences + 1)))})
        return sequences / (time.perf_counter() - start)

    return float(ray.get(timed.remote()))


@contextlib.contextmanager
def two_nodes() -> Iterator[dict]:
    """A trainer node on the first core and a render node on the others, this process their
    driver. Yields {'trainer', 'render': node ids, 'render_cores': count}."""
    from benchmarks.lib.cluster import pin_node, ray_cluster

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("stream_train --cluster: needs 2 cores or more (one per node)")
    with ray_cluster(num_cpus=1, resources={"trainer": 1}) as cluster:
        pin_node(cluster.head_node, cores[:1])
        node = cluster.add_node(num_cpus=len(cores) - 1, resources={"render": 1000})
        pin_node(node, cores[1:])
        cluster.wait_for_nodes()
        yield {"trainer": cluster.head_node.node_id, "render": node.node_id,
               "render_cores": len(cores) - 1}


def render_actor_nodes() -> dict[str, int]:
    """How many of the stream's render actors (Ray Data map actors running StreamRenderer)
    ran on each node."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, limit=10000,
                         raise_on_missing_output=False)
    nodes: dict[str, int] = {}
    for a in actors:
        if "StreamRenderer" in a.class_name:
            nodes[a.node_id] = nodes.get(a.node_id, 0) + 1
    return nodes


def measure(args: argparse.Namespace, preset: str, steps: int, where: dict | None
            ) -> tuple[list[list[object]], dict[str, float | int | str], str]:
    """The runs, in the Ray this process is attached to: table rows, RESULT values, and a
    line saying where the trainer and the render actors ran (cluster mode)."""
    import mlflow

    from framecast.cluster import init_ray
    from jobs.train import NODE_TAG

    init_ray()
    rows: list[list[object]] = []
    values: dict[str, float | int | str] = {}
    placed = ""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / args.kind
        # One render actor on the cluster: two would take half of each 1-CPU node and leave
        # no whole CPU on either for Ray Data's read and write tasks.
        render(RenderJobConfig(kind=args.kind, num_sequences=160, frames=12, size=args.size,
                               out=str(data), mlflow=False, workers=1 if where else 2))
        base = {"data": str(data), "preset": preset, "steps": steps, "batch_size": BATCH,
                "log_every": 1, "checkpoint_every": steps, "eval_every": steps,
                "eval_sequences": 4, "register": "none", "storage": str(Path(tmp) / "ray")}
        if where:  # the trainer takes its node's one CPU and slot; actors go elsewhere
            base.update(worker_resources="trainer=1", cpus_per_worker=1.0)
        run = train(TrainJobConfig(**base))
        rendered = steps_per_s(run["run_id"], steps)
        rows.append(["pre-rendered train split", "-", rendered, 1.0])
        print(f"pre-rendered: {rendered:.2f} steps/s", flush=True)
        values["rendered_steps_per_s"] = rendered
        trainer_nodes = set()
        for actors in args.actors:
            run = train(TrainJobConfig(**base, stream=True, stream_actors=actors))
            rate = steps_per_s(run["run_id"], steps)
            trainer_nodes.add(mlflow.MlflowClient().get_run(run["run_id"]).data.tags.get(
                NODE_TAG.format(0)))
            rows.append(["stream", actors, rate, rate / rendered])
            print(f"stream, {actors} render actor(s): {rate:.2f} steps/s", flush=True)
            values[f"stream_steps_per_s_a{actors}"] = rate
            values[f"stream_vs_rendered_a{actors}"] = rate / rendered
        one_actor = render_rate(data, 4 * BATCH, {"render": 1} if where else {})
        values["render_seq_per_s_per_actor"] = one_actor
        values["trainer_seq_per_s"] = rendered * BATCH
        values["actors_per_trainer"] = rendered * BATCH / one_actor
        print(f"one render actor alone: {one_actor:.1f} sequences/s; the trainer consumes "
              f"{rendered * BATCH:.1f}/s: {rendered * BATCH / one_actor:.2f} actors per trainer",
              flush=True)
        if where:
            nodes = render_actor_nodes()
            names = {where["trainer"]: "trainer node", where["render"]: "render node"}
            on_render = nodes.get(where["render"], 0)
            elsewhere = sum(nodes.values()) - on_render
            trainer_placed = trainer_nodes == {where["trainer"]}
            placed = (f"Placement read back from Ray: the training worker on "
                      f"{', '.join(names.get(n, str(n)) for n in sorted(map(str, trainer_nodes)))}"
                      f"; render actors: {on_render} on the render node, {elsewhere} elsewhere")
            print(placed, flush=True)
            values["actors_on_render_node"] = on_render
            values["actors_elsewhere"] = elsewhere
            values["trainer_on_trainer_node"] = int(trainer_placed)
            if elsewhere or not on_render or not trainer_placed:
                raise SystemExit(f"stream_train --cluster: not the placement measured here, "
                                 f"nothing recorded. {placed}")
    return rows, values, placed


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, 60 steps")
    parser.add_argument("--cluster", action="store_true",
                        help="a 2-node Ray cluster on this machine: trainer node and render node "
                        "on cores of their own")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2],
                        help="render actor counts to try")
    parser.add_argument("--kind", choices=("2d", "3d"), default="2d", help="what is rendered")
    parser.add_argument("--size", type=int, default=16, help="frame size in pixels")
    parser.add_argument("--preset", default=None, help="model preset (default demo; tiny with "
                        "--quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 200; "
                        "60 with --quick)")
    args = parser.parse_args()
    if min(args.actors) < 1 or args.size < 8:
        parser.error("--actors must be >= 1 and --size >= 8")
    preset = args.preset or ("tiny" if args.quick else "demo")
    steps = args.steps or (60 if args.quick else 200)

    if args.cluster:
        with two_nodes() as where:
            rows, values, placed = measure(args, preset, steps, where)
        setting = (f"a 2-node Ray cluster on this machine (ray.cluster_utils): a trainer node "
                   f"pinned to 1 core with 1 CPU, and a render node pinned to the other "
                   f"{where['render_cores']} core(s); the render actors share the render node's "
                   f"CPUs. {placed}")
    else:
        rows, values, placed = measure(args, preset, steps, None)
        setting = ("local Ray on this machine: the render actors share the CPUs the worker "
                   "leaves, on the same cores as the trainer")
    values["cluster"] = int(args.cluster)
    table = markdown_table(["train source", "render actors", "steps/s", "vs pre-rendered"],
                           rows)
    notes = (f"V-BLT `{preset}`, one Ray Train worker, batch {BATCH} of 12 frames of "
             f"{args.size}x{args.size} {args.kind.upper()} data, {steps} steps, steps/s after "
             f"the first {steps // 5}; {setting}. A streamed sequence is rendered once and used "
             f"once. One render actor alone renders {values['render_seq_per_s_per_actor']:.1f} "
             f"sequences/s; the pre-rendered trainer consumes {values['trainer_seq_per_s']:.1f}"
             f"/s, so it needs {values['actors_per_trainer']:.2f} render actors (cores).")
    report("stream_train", "training on a stream vs a pre-rendered set", table, notes,
           f"RESULT stream_train {key_values(values)}")


if __name__ == "__main__":
    main()
