"""Ray Tune studies as data: a `tune_spaces/*.yaml` file -> a checked `StudySpec`.

    name: vblt_patch_sizes          # study name (MLflow parent run, Ray Tune experiment)
    job: train                      # train | quantize: whose entry point a trial calls
    base: {model: vblt, preset: small, steps: 300}    # that job's flags, fixed for every trial
    params:                         # searched: a job flag (lr) or model_config.KEY
      model_config.patch: {choice: [1x4x4, 2x4x4, 4x4x4]}
      lr: {loguniform: [3.0e-4, 3.0e-3]}
    metric: val_psnr                # what the scheduler and "best" use
    mode: max
    report: [val_ssim, gflops]      # more metrics for the table and the plot
    num_samples: 2                  # samples of the space (grid: repeats of every grid point)
    scheduler: {asha: {grace_period: 100, max_t: 300}}    # or fifo
    trial_resources: {cpu: 1}       # CPUs one trial reserves (its Ray Train workers included)
    plot: {x: gflops, y: val_psnr}  # optional; color: KEY adds a third metric
    pareto: {gflops: min, val_psnr: max}   # optional: objectives of the Pareto front
    seed: 0                         # optional: seed of the random search

Distributions: `choice`, `grid` (every value, `num_samples` times), `uniform`, `loguniform`,
`randint` ([lo, hi), as Ray Tune's). Everything a user can get wrong is refused with one line
naming the key or value (ConfigError) before Ray starts: `load_study` checks the file's shape and
the job's flags, `check_models` the model fields against the data's frames (a patch that does not
tile them, a block that does not tile the token grid), `check_metrics` the metric names against
what a trial reports. No Ray here: the job turns `Param`s into `ray.tune` objects.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framecast.config import ConfigError, from_dict, read_yaml

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("fifo", "asha")
TOP_KEYS = ("name", "job", "base", "params", "metric", "mode", "report", "num_samples",
            "scheduler", "trial_resources", "plot", "pareto", "seed")
REQUIRED = ("name", "job", "base", "params", "metric", "mode")
MODEL_PREFIX = "model_config."
# Set by the study for every trial, never by the space: where a trial's run lives and what it
# reserves (trial_resources decides the CPUs).
RESERVED_FLAGS = ("name", "storage", "register", "cpus_per_worker")


@dataclass(frozen=True)
class Param:
    """One searched flag: a job flag (`lr`) or a model field (`model_config.patch`)."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # choice / grid: the values; uniform, loguniform, randint: (lo, hi)

    @property
    def model_field(self) -> str | None:
        return self.key[len(MODEL_PREFIX):] if self.key.startswith(MODEL_PREFIX) else None

    def corners(self) -> tuple[Any, ...]:
        """The values that bound what a trial can draw: every listed value, or both ends."""
        if self.kind in ("choice", "grid"):
            return self.values
        lo, hi = self.values
        return (lo, hi - 1) if self.kind == "randint" else (lo, hi)


@dataclass(frozen=True)
class Scheduler:
    kind: str = "fifo"  # fifo | asha
    grace_period: int = 1  # ASHA: steps before a trial can be stopped
    max_t: int = 0  # ASHA: steps of a full trial
    reduction_factor: float = 4.0


@dataclass(frozen=True)
class StudySpec:
    name: str
    job: str
    base: dict[str, Any]
    params: tuple[Param, ...]
    metric: str
    mode: str
    report: tuple[str, ...] = ()
    num_samples: int = 1
    scheduler: Scheduler = Scheduler()
    trial_cpus: float = 1.0
    plot: dict[str, str] = dataclasses.field(default_factory=dict)
    pareto: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    source: str = ""

    @property
    def metrics(self) -> tuple[str, ...]:
        """The study's metric first, then the reported ones (no repeats)."""
        return tuple(dict.fromkeys((self.metric, *self.report)))

    def trial_flags(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """The job's flags for one trial: `base` with the sampled values; model fields join
        `base.model_config` (a sampled field replaces the base's)."""
        flags = {k: v for k, v in self.base.items()}
        model = _split_model_config(str(flags.get("model_config", "")))
        for key, value in sampled.items():
            field = key[len(MODEL_PREFIX):] if key.startswith(MODEL_PREFIX) else None
            if field is None:
                flags[key] = value
            else:
                model[field] = _model_text(value)
        if model:
            flags["model_config"] = ",".join(f"{k}={v}" for k, v in model.items())
        return flags


def _split_model_config(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def _model_text(value: Any) -> str:
    """A value as `--model-config` writes it: tuples as 2x4x4, booleans true/false."""
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _number(where: str, value: Any, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: {value!r} is not {kind}")
    return value


def _param(path: str, key: Any, text: Any) -> Param:
    where = f"{path}: params.{key}"
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{path}: params key {key!r} must be a job flag or model_config.KEY")
    if not isinstance(text, dict) or len(text) != 1:
        raise ConfigError(f"{where}: expected one distribution, e.g. {{choice: [a, b]}} "
                          f"(one of {', '.join(DISTRIBUTIONS)}), got {text!r}")
    (kind, values), = text.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; accepted: "
                          f"{', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: {kind} lists a value twice: {values!r}")
        return Param(key, kind, tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where}: {kind} needs [lo, hi], got {values!r}")
    lo, hi = (_number(f"{where}.{kind}", v, integer=kind == "randint") for v in values)
    if lo >= hi:
        raise ConfigError(f"{where}: {kind} [{lo}, {hi}]: lo must be < hi")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform [{lo}, {hi}]: lo must be > 0")
    return Param(key, kind, (lo, hi))


def _scheduler(path: str, value: Any, job: str) -> Scheduler:
    if value in (None, "fifo", {"fifo": None}, {"fifo": {}}):
        return Scheduler()
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in SCHEDULERS:
        raise ConfigError(f"{path}: scheduler {value!r}: expected fifo or "
                          "{asha: {grace_period: N, max_t: N}}")
    options = value["asha"] or {}
    if job != "train":
        raise ConfigError(f"{path}: scheduler asha needs a job that reports every step (train); "
                          f"{job} reports once: use fifo")
    unknown = sorted(set(options) - {"grace_period", "max_t", "reduction_factor"})
    if unknown:
        raise ConfigError(f"{path}: scheduler.asha: unknown key(s) {unknown}; accepted: "
                          "grace_period, max_t, reduction_factor")
    grace = _number(f"{path}: scheduler.asha.grace_period", options.get("grace_period", 1), True)
    max_t = _number(f"{path}: scheduler.asha.max_t", options.get("max_t", 0), True)
    factor = _number(f"{path}: scheduler.asha.reduction_factor",
                     options.get("reduction_factor", 4.0))
    if not 1 <= grace < max_t or factor <= 1:
        raise ConfigError(f"{path}: scheduler.asha needs 1 <= grace_period < max_t and "
                          f"reduction_factor > 1, got {options!r}")
    return Scheduler("asha", int(grace), int(max_t), float(factor))


def parse_study(values: Any, path: str, job_configs: Mapping[str, type],
                data: str | None = None) -> StudySpec:
    """The study in `values` (a YAML document) checked against the job's config class
    (`job_configs[job]`, e.g. TrainJobConfig): top-level keys, distributions, ranges, mode,
    scheduler, and the job's flags at every corner of the space (`Param.corners`), so an unknown
    flag or model field, or a value the job refuses, is refused now. `data` supplies or replaces
    `base.data`. Raises ConfigError with one line naming the key or value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(REQUIRED)}")
    unknown = sorted(set(values) - set(TOP_KEYS), key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; accepted: {', '.join(TOP_KEYS)}")
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")
    name, job = values["name"], values["job"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise ConfigError(f"{path}: name {name!r} must be a non-empty word (no spaces or /)")
    if job not in job_configs:
        raise ConfigError(f"{path}: job {job!r} is unknown; accepted: {', '.join(job_configs)}")
    if values["mode"] not in ("min", "max"):
        raise ConfigError(f"{path}: mode {values['mode']!r} must be min or max")
    base = values["base"]
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a mapping of {job} flags, got {base!r}")
    base = {str(k).replace("-", "_"): v for k, v in base.items()}
    if data:
        base["data"] = str(Path(data).resolve())
    elif isinstance(base.get("data"), str) and base["data"]:
        base["data"] = str(Path(base["data"]).expanduser().resolve())
    if not isinstance(values["params"], dict) or not values["params"]:
        raise ConfigError(f"{path}: params must map at least one flag to a distribution")
    params = tuple(_param(path, k, v) for k, v in values["params"].items())
    report = values.get("report") or []
    if not isinstance(report, list) or not all(isinstance(r, str) for r in report):
        raise ConfigError(f"{path}: report must be a list of metric names, got {report!r}")
    if not isinstance(values["metric"], str) or not values["metric"]:
        raise ConfigError(f"{path}: metric {values['metric']!r} must be a metric name")
    samples = _number(f"{path}: num_samples", values.get("num_samples", 1), integer=True)
    if samples < 1:
        raise ConfigError(f"{path}: num_samples={samples} must be >= 1")
    resources = values.get("trial_resources") or {"cpu": 1}
    if not isinstance(resources, dict) or set(resources) != {"cpu"}:
        raise ConfigError(f"{path}: trial_resources {resources!r}: expected {{cpu: N}}")
    cpus = _number(f"{path}: trial_resources.cpu", resources["cpu"])
    if cpus < 0.2:
        raise ConfigError(f"{path}: trial_resources.cpu={cpus} must be >= 0.2 (0.1 of it runs "
                          "the trial's driver)")
    plot, pareto = values.get("plot") or {}, values.get("pareto") or {}
    if not isinstance(plot, dict) or plot and not {"x", "y"} <= set(plot) <= {"x", "y", "color"}:
        raise ConfigError(f"{path}: plot {plot!r}: expected {{x: METRIC, y: METRIC}} and "
                          "optionally color: METRIC")
    if not isinstance(pareto, dict) or any(m not in ("min", "max") for m in pareto.values()):
        raise ConfigError(f"{path}: pareto {pareto!r}: expected {{METRIC: min|max, ...}}")
    spec = StudySpec(
        name=name, job=job, base=base, params=params, metric=values["metric"],
        mode=values["mode"], report=tuple(report), num_samples=int(samples),
        scheduler=_scheduler(path, values.get("scheduler"), job), trial_cpus=float(cpus),
        plot={k: str(v) for k, v in plot.items()}, pareto={str(k): v for k, v in pareto.items()},
        seed=int(_number(f"{path}: seed", values.get("seed", 0), integer=True)), source=path)
    if "data" in {f.name for f in dataclasses.fields(job_configs[job])} and not base.get("data"):
        raise ConfigError(f"{path}: no data set: give --data DIR (or base.data)")
    _check_flags(spec, job_configs[job])
    return spec


def load_study(path: str | Path, job_configs: Mapping[str, type],
               data: str | None = None) -> StudySpec:
    """Read and check a study file (see `parse_study`)."""
    return parse_study(read_yaml(path, "--space"), str(path), job_configs, data)


def _check_flags(spec: StudySpec, config_class: type) -> None:
    """Build the job's config at every corner of the space: its own checks (types, ranges,
    model names and fields) refuse what a trial would."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    where = spec.source
    for key in spec.base:
        if key not in fields:
            raise ConfigError(f"{where}: base.{key}: {spec.job} has no flag {key!r}")
        if key in RESERVED_FLAGS:
            raise ConfigError(f"{where}: base.{key}: set by the study for each trial, not by "
                              "the space")
    for param in spec.params:
        flag = "model_config" if param.model_field is not None else param.key
        if flag not in fields:
            raise ConfigError(f"{where}: params.{param.key}: {spec.job} has no flag {flag!r}")
        if flag in RESERVED_FLAGS or param.key in spec.base:
            raise ConfigError(f"{where}: params.{param.key}: already fixed by the study "
                              + ("(base)" if param.key in spec.base else "for each trial"))
        if param.model_field is not None and param.kind not in ("choice", "grid"):
            raise ConfigError(f"{where}: params.{param.key}: model fields take choice or grid "
                              f"(every value is checked against the data), not {param.kind}")

    def error(flags: dict[str, Any]) -> str | None:
        try:
            from_dict(config_class, flags)
        except (TypeError, ValueError) as err:  # ConfigError among them
            return str(err)
        return None

    in_base = error(spec.trial_flags({}))  # the same error without any param: base's own
    first = {p.key: p.corners()[0] for p in spec.params}
    for param in spec.params:
        for value in param.corners():
            found = error(spec.trial_flags({**first, param.key: value}))
            if found is not None:
                what = "base" if found == in_base else f"params.{param.key}={_model_text(value)}"
                raise ConfigError(f"{where}: {what}: {found}")


def model_variants(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the searched model fields' values ({params key: value})."""
    model = [p for p in spec.params if p.model_field is not None]
    return [dict(zip([p.key for p in model], combo, strict=True))
            for combo in itertools.product(*(p.values for p in model))]


def check_models(spec: StudySpec, model: str, preset: str, frame_shape: tuple[int, ...],
                 components: Mapping[str, Any] | None = None) -> None:
    """Build every model the study can draw (each combination of searched model fields) for
    data of `frame_shape` (T, H, W, C) around its loaded `components` (a generator's
    tokenizer) and let it refuse the data: a patch that does not tile the frames, a block that
    does not tile the token grid. ConfigError names the params and values."""
    from framecast.models import registry

    parse = registry.parse_overrides
    for variant in model_variants(spec):
        overrides = parse(model, spec.trial_flags(variant).get("model_config", ""))
        shown = ", ".join(f"params.{k}={_model_text(v)}" for k, v in variant.items())
        try:
            config = registry.model_config(model, preset, frame_shape=tuple(frame_shape),
                                           **overrides)
            registry.entry(model).build(config, **(components or {})).check_data(
                tuple(frame_shape))
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{spec.source}: {shown}: {err}") from None


def check_metrics(spec: StudySpec, available: set[str] | frozenset[str]) -> None:
    """Refuse a metric (the study's, a reported one, a plot or Pareto axis) that a trial does
    not report."""
    named = [("metric", spec.metric), *(("report", m) for m in spec.report),
             *((f"plot.{k}", v) for k, v in spec.plot.items()),
             *(("pareto", m) for m in spec.pareto)]
    for where, name in named:
        if name not in available:
            raise ConfigError(f"{spec.source}: {where} {name!r} is not among the trial's "
                              f"metrics: {', '.join(sorted(available))}")
