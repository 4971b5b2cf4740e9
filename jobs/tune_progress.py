"""The tune job's per-trial progress lines, in a module of their own.

Ray Tune pickles its callbacks with the study and restores them on resume. A class defined in
`jobs.tune` run as `python -m jobs.tune` lives in `__main__`, which cloudpickle pickles *by
value*, globals included: the restored callback then updated a copy of the progress state, and
a resumed study reported "0 trial(s) ran this time" after running one. Here the callback is
pickled by reference (`jobs.tune_progress.StudyProgress`) and its state is this module's.
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune


def label(sampled: dict[str, Any]) -> str:
    def short(key: str, value: Any) -> str:
        name = key.rsplit(".", 1)[-1]
        return f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"

    return " ".join(short(k, v) for k, v in sampled.items())


class _Progress:
    """What the driver prints as trials end (the callback below forwards here: Ray Tune
    pickles its callbacks with the study and restores them on resume, so state lives in the
    module, not in the callback)."""

    def __init__(self) -> None:
        self.study: Any = None  # the running jobs.tune Study
        self.ended: set[str] = set()  # trials that ended in this process (Tune does not call
        self.reused: set[str] = set()  # on_trial_start for trials it resumes)

    def reset(self, study: Any) -> None:
        self.study, self.ended, self.reused = study, set(), set()

    def value(self, trial: Any) -> float:
        value = (trial.last_result or {}).get(self.study.spec.metric)
        return float(value) if isinstance(value, (int, float)) else math.nan

    def completed(self, trials: list, trial: Any) -> None:
        spec, result = self.study.spec, trial.last_result or {}
        self.ended.add(trial.trial_id)
        if result.get("reused"):
            self.reused.add(trial.trial_id)
        done = [t for t in trials if t.status == "TERMINATED" or t is trial]
        scored = [t for t in done if not math.isnan(self.value(t))]
        sign = 1.0 if spec.mode == "max" else -1.0
        best = max(scored, key=lambda t: sign * self.value(t)) if scored else None
        step = result.get("step")
        note = " (finished before)" if result.get("reused") else ""
        if self.study.steps and isinstance(step, (int, float)) and step < self.study.steps:
            note = f" (stopped early by ASHA at step {int(step)})"
        line = (f"tune: trial {len(done)}/{max(self.study.trials, len(trials))} "
                f"{trial.trial_id} {label(trial.config['p'])}: {spec.metric} "
                f"{self.value(trial):.4g}{note}")
        if best is not None:
            line += (f" | best so far {best.trial_id} {spec.metric} {self.value(best):.4g} "
                     f"({label(best.config['p'])})")
        print(line, flush=True)

    def failed(self, trial: Any) -> None:
        self.ended.add(trial.trial_id)
        print(f"tune: trial {trial.trial_id} {label(trial.config['p'])} failed; its error is "
              f"in {trial.path}", flush=True)


PROGRESS = _Progress()


class StudyProgress(tune.Callback):
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        PROGRESS.completed(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        PROGRESS.failed(trial)
