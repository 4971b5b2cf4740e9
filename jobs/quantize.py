"""Quantize a logged model to mixed-precision W8A8 (VQ-ViT) and register it for serving.

    python -m jobs.quantize --model vblt-2d --data data/2d-demo-s0     # data of `make demo`
    python -m jobs.quantize --model <run id> --data DIR --tau-low 0.01 --tau-high 0.05

The schedule (framecast.quant.schedule): sensitivity S(W) of every linear layer (patch
convolutions included) on train batches, a plan from the thresholds (int8 / int8 asymmetric /
fp16), then stage by stage MLP -> attention output -> Q/K/V -> embeddings/head with a short
calibration fine-tune each and a fall-back to higher precision when a stage costs more than
--tau-psnr-db on val sequences; a final fine-tune; int8 weights frozen for real.

Reports, prints and logs to MLflow: compression ratio bytes(fp32) / bytes(quantized), speed-up
latency(fp32) / latency(quantized) at batch 1 and 8, and the quality change on the test split
(MSE / PSNR / SSIM, cross-entropy, KL from the fp32 distributions). Registers the quantized model
(default name <model>-<kind>-int8) with alias `candidate`, linked to the fp32 model's run.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from framecast.config import ConfigError, check_bounds, flat_params
from framecast.quant.schedule import QuantConfig
from jobs.common import load_logged_model, log_prediction_figure, note_other_data_kind, run_job

LATENCY_BATCH_SIZES = (1, 8)  # one clip (a user waiting) and a batch (a server's throughput)


@dataclass(frozen=True)
class QuantizeJobConfig(QuantConfig):
    model: str = field(default="", metadata={
        "help": "the fp32 model: run id, runs:/ or models:/ URI, registered name[@alias] "
                "(required)"})
    data: str = field(default="", metadata={"help": "data set folder (required)"})
    batch_size: int = field(default=8, metadata={"help": "fine-tune and evaluation batch size"})
    eval_sequences: int = field(default=16, metadata={
        "help": "val sequences that decide fall-backs during the schedule"})
    test_sequences: int = field(default=0, metadata={
        "help": "test sequences for the final report (0: the whole split)"})
    latency_repeats: int = field(default=5, metadata={
        "help": "timed forward passes per size and round (4 rounds, forms alternated)"})
    latency_span_ms: float = field(default=300.0, metadata={
        "help": "a fast call is timed over more passes, enough to span this long (40 at "
                "most): a few passes of a 20 ms call are within a shared machine's noise"})
    register: str = field(default="", metadata={
        "help": "registered name (default: <model>-<kind>-int8); 'none' to skip"})
    alias: str = field(default="candidate", metadata={"help": "alias for the new version"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})
    seed: int = field(default=0, metadata={"help": "calibration batch order"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model or not self.data:
            raise ConfigError("--model and --data are required")
        check_bounds(self, positive=("batch_size", "eval_sequences", "latency_repeats"),
                     non_negative=("test_sequences", "latency_span_ms"))
        from framecast.tracking import check_alias, check_registered_name

        if self.register not in ("", "none"):
            check_registered_name(self.register)
        check_alias(self.alias)


def shuffled_batches(videos: np.ndarray, batch_size: int, seed: int) -> Iterator:
    """Endless uint8 tensor batches, reshuffled every pass."""
    import torch

    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(videos))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield torch.from_numpy(videos[np.sort(order[start:start + batch_size])])


def ratio_words(ratio: float, better: str, worse: str) -> str:
    """A ratio read the right way round: 1.15 -> '1.15x faster', 0.87 -> '1.15x slower'."""
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def report_table(values: dict[str, float]) -> str:
    """fp32 | quantized | change, one row per measure the model's family reports."""
    rows = [("size (MB)", "bytes_fp32", "bytes_quant",
             lambda: ratio_words(values['size_ratio'], "smaller", "larger"), 1e-6),
            ("latency b1 (ms)", "latency_ms_fp32_b1", "latency_ms_quant_b1",
             lambda: ratio_words(values['speedup_b1'], "faster", "slower") + " *", 1),
            ("latency b8 (ms)", "latency_ms_fp32_b8", "latency_ms_quant_b8",
             lambda: ratio_words(values['speedup_b8'], "faster", "slower") + " *", 1),
            ("PSNR (dB)", "psnr_fp32", "psnr_quant", lambda: f"{-values['psnr_drop_db']:+.3f} dB",
             1),
            ("SSIM", "ssim_fp32", "ssim_quant", lambda: f"{-values['ssim_drop']:+.4f}", 1),
            ("MSE", "mse_fp32", "mse_quant", lambda: f"{values['mse_increase']:+.5f}", 1),
            ("cross-entropy (nats)", "cross_entropy_fp32", "cross_entropy_quant",
             lambda: f"{values['cross_entropy_increase']:+.4f}", 1),
            ("token accuracy", "accuracy_fp32", "accuracy_quant",
             lambda: f"{values['accuracy_quant'] - values['accuracy_fp32']:+.4f}", 1)]
    lines = [f"{'':22s} {'fp32':>10s} {'quantized':>10s}  change"]
    lines += [f"{name:22s} {values[a] * unit:10.4g} {values[b] * unit:10.4g}  {change()}"
              for name, a, b, change, unit in rows if a in values]
    if "latency_ms_quant_b1" in values:
        lines.append("* latency: each form's median timing round; a ratio is the median of the "
                     "rounds' ratios (forms timed in the same round share the machine's speed), "
                     "so it can differ from the ratio of the two medians")
    if "best_float" in values:
        lines.append("quantized model against the best float form here, each the faster of its "
                     "compute forms at that batch size (W8A8 layers each in their fastest "
                     "form): " + "; ".join(
                         f"batch {b}: {values[f'quant_compute_b{b}']} against "
                         f"{values[f'best_float_b{b}']}, "
                         + ratio_words(values[f"speedup_vs_best_float_b{b}"], "faster", "slower")
                         for b in LATENCY_BATCH_SIZES
                         if f"speedup_vs_best_float_b{b}" in values))
    if "kl_fp32_quant" in values:
        lines.append(f"KL(fp32 || quantized) per byte: {values['kl_fp32_quant']:.5f} nats")
    if "token_agreement" in values:
        lines.append(f"greedy generation: {values['token_agreement']:.1%} of tokens as fp32's, "
                     f"frames at {values['psnr_quant_vs_fp32']:.2f} dB PSNR against fp32's "
                     "(PSNR/SSIM/MSE above: continuations against the truth)")
    return "\n".join(lines)


def reported_metrics(generator: bool) -> frozenset[str]:
    """The numeric metrics `quantize` can report for a token generator (or a frame predictor),
    whichever compute forms the machine it runs on offers."""
    from framecast.quant import compare, compute_form

    forms = compute_form.FORMS
    return compare.reported_keys(generator, forms, forms, LATENCY_BATCH_SIZES) | {
        "psnr_drop_bf16_compute_db"}


def quantize(config: QuantizeJobConfig) -> dict:
    import mlflow

    from framecast import data as fdata
    from framecast import model_io, tracking, viz
    from framecast.models.contract import FramePredictor, TokenGenerator
    from framecast.quant import compare, compute_form
    from framecast.quant.apply import precision_counts
    from framecast.quant.plan import format_plan, plan_records
    from framecast.quant.schedule import progressive_quantize

    manifest = fdata.read_manifest(config.data)
    tracking.use_experiment(config.experiment)
    fp32, meta = load_logged_model(config.model)
    fp32_run = model_io.source_run_id(config.model)
    if meta.get("quant_plan"):
        raise ConfigError(f"--model {config.model!r} is already quantized; give the fp32 model")
    if not isinstance(fp32, FramePredictor | TokenGenerator):
        raise ConfigError(f"jobs.quantize quantizes frame predictors and token generators; "
                          f"{meta['name']} is a {fp32.family}")
    fp32.check_data(manifest.config.frame_shape)
    note_other_data_kind("quantize", config.model, meta, manifest)
    train, _ = fdata.load_numpy(config.data, "train")
    val, _ = fdata.load_numpy(config.data, "val")
    test, _ = fdata.load_numpy(config.data, "test")
    if len(train) < config.batch_size or not len(test):
        raise ConfigError(f"{config.data}: needs >= {config.batch_size} train sequences and a "
                          f"non-empty test split")
    val = (val if len(val) else test)[:config.eval_sequences]
    test = test[:config.test_sequences] if config.test_sequences else test
    register = None if config.register == "none" else (
        config.register or f"{meta['name']}-{manifest.config.kind}-int8")
    if register:
        tracking.check_register_precision(register, "w8a8")

    print(f"quantize: {meta['name']} from {config.model} (run {fp32_run}); calibrating on "
          f"{len(train)} train sequences of {config.data}")
    with tracking.job_run("quantize", experiment=config.experiment,
                          run_name=f"quantize-{meta['name']}-{manifest.config.kind}",
                          params=flat_params(config),
                          tags={tracking.MODEL_REF_TAG: config.model,
                                tracking.FP32_RUN_TAG: fp32_run or ""}) as run:
        result = progressive_quantize(copy.deepcopy(fp32), shuffled_batches(
            train, config.batch_size, config.seed), val, config)
        quant = result.model
        bf16, bf16_quality, forms = bf16_compute(fp32, quant, test, config)
        values = {**compare.compression(fp32, quant),
                  **compare.deployed_speedups(
                      compute_form.in_forms(fp32, compute_form.available()),
                      forms, test, LATENCY_BATCH_SIZES, config.latency_repeats,
                      config.latency_span_ms)}
        # The deployed quality: the bf16 form's where some batch size computes in it.
        deployed = {b: values[f"quant_compute_b{b}"] for b in LATENCY_BATCH_SIZES}
        scored = "bf16" if "bf16" in deployed.values() else "fp32"
        values.update(bf16_quality if scored == "bf16" else
                      compare.quality(fp32, quant, test, config.batch_size))
        if bf16["measured"]:
            values["psnr_drop_bf16_compute_db"] = bf16["psnr_drop_db"]
        computes = ", ".join(f"{form} at batch {b}" for b, form in deployed.items())
        print(f"quantize: {len(test)} test sequences; layers {precision_counts(quant)}; "
              f"computes in {computes}; {bf16['why']}; quality below: its {scored} compute "
              "form")
        print(report_table(values))
        mlflow.log_metrics({k: v for k, v in values.items() if not isinstance(v, str)})
        mlflow.set_tags({k: v for k, v in values.items() if isinstance(v, str)})
        for i, row in enumerate(result.history):
            mlflow.log_metric("stage_psnr_drop_db", row["psnr_drop_db"], step=i)
        # The artifacts show the compute form each layer chose here; the model's metadata
        # keeps the plan alone (another machine measures its own forms).
        chosen = compute_form.kept_layer_forms(forms[f] for f in set(deployed.values()))
        tracking.log_file_bytes(json.dumps(plan_records(result.plan, chosen), indent=1).encode(),
                                "quantization", "plan.json")
        tracking.log_file_bytes(format_plan(result.plan, chosen).encode(), "quantization",
                                "plan.txt")
        records = plan_records(result.plan)
        tracking.log_file_bytes(json.dumps(result.history, indent=1).encode(), "quantization",
                                "stages.json")
        tracking.log_file_bytes(viz.plan_figure(
            [e.layer for e in result.plan], [e.sensitivity for e in result.plan],
            [e.precision.value for e in result.plan], result.thresholds,
            title=f"{meta['name']} quantization plan"), "figures", "plan.png")
        log_prediction_figure(quant, test[0], title="quantized")
        if isinstance(quant, TokenGenerator):
            log_generation_gif(fp32, quant, test[:4])
        extra = {k: meta[k] for k in ("preset", "data", "frame_shape", "step") if k in meta}
        extra.update({"precision": "w8a8", "quant_plan": records, "fp32_run_id": fp32_run,
                      "fp32_model": config.model, "bf16_compute": bf16})
        info = model_io.log_model(quant, meta["name"], registered_name=register, extra=extra)
        if register:
            link_version(register, info.registered_model_version, config.alias, fp32_run,
                         config.model, values)
    print(f"quantize: MLflow run {run.info.run_id}; model {info.model_uri}"
          + (f" registered as {register} v{info.registered_model_version} "
             f"@{config.alias}" if register else ""))
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "registered": register,
            "model": quant,
            "version": info.registered_model_version, "metrics": values, "plan": result.plan,
            "history": result.history}


def bf16_compute(fp32, quant, test: np.ndarray, config: QuantizeJobConfig
                 ) -> tuple[dict, dict, dict]:
    """Whether the quantized model may run the rest of its compute in bf16 (where a machine has
    native bf16, `compute_form`): its bf16 form scored on the test split against fp32, allowed
    within `tau_psnr_db`, as its W8A8 layers are. Only measured where this CPU has native bf16
    (an emulated pass is many times slower). Returns the record kept with the model, the bf16
    form's quality values ({} where not measured) and the forms to time."""
    from framecast.quant import compare, compute_form

    if "bf16" not in compute_form.available():
        return ({"measured": False, "allowed": False,
                 "why": "bf16 form not scored: no native bf16 on the quantizing machine"},
                {}, {"fp32": quant})
    forms = compute_form.in_forms(quant, ("fp32", "bf16"))
    q = compare.quality(fp32, forms["bf16"], test, config.batch_size)
    allowed = q["psnr_drop_db"] <= config.tau_psnr_db
    record = {"measured": True, "allowed": bool(allowed),
              "psnr_drop_db": round(float(q["psnr_drop_db"]), 4),
              "why": f"bf16 form's PSNR {-q['psnr_drop_db']:+.3f} dB against fp32: "
                     f"{'allowed' if allowed else 'refused'}, the most a form may lose being "
                     f"{config.tau_psnr_db} dB"}
    return record, q, forms if allowed else {"fp32": quant}


def log_generation_gif(fp32, quant, clips: np.ndarray) -> None:
    """Animated GIF of truth | fp32 continuation | quantized continuation (greedy)."""
    from framecast import tracking, viz
    from framecast.generation import continue_clips

    k = fp32.min_context_frames(tuple(clips.shape[1:]))
    rows = [clips] + [np.concatenate([clips[:, :k], continue_clips(m, clips, k)[0]], axis=1)
                      for m in (fp32, quant)]
    tracking.log_file_bytes(viz.gif_bytes(np.concatenate(rows, axis=3)), "generation",
                            "truth_fp32_quantized.gif")


def link_version(name: str, version: str | int, alias: str, fp32_run: str | None,
                 fp32_ref: str, values: dict[str, float]) -> None:
    """Alias the new version and tie it to the fp32 model it came from."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, str(version))
    tags = {"precision": "w8a8", "fp32_model": fp32_ref, "fp32_run_id": fp32_run or "",
            "size_ratio": f"{values['size_ratio']:.3f}",
            "psnr_drop_db": f"{values['psnr_drop_db']:.4f}"}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    client.update_model_version(name, str(version), description=(
        f"Mixed-precision W8A8 of {fp32_ref} (fp32 run {fp32_run}): "
        f"{values['size_ratio']:.2f}x smaller, PSNR change {-values['psnr_drop_db']:+.3f} dB."))


def main(argv: list[str] | None = None) -> int:
    return run_job("quantize", QuantizeJobConfig, quantize, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
