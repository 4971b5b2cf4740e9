"""A replica's compute form per dynamic batch size (`serve.model_deployment.choose_form`):
timed at start, the faster form kept for each batch class, requests routed by their batch."""

import time

import torch

from framecast.models import create
from serve.model_deployment import ModelReplica, choose_form

# ms of a workload by compute form and batch: fp32 faster alone, bf16 faster in a batch
SLEEP_MS = {torch.float32: {1: 2.0, 2: 4.0, 4: 8.0, 8: 16.0},
            torch.bfloat16: {1: 12.0, 2: 12.0, 4: 4.0, 8: 6.0}}


def test_a_form_faster_alone_and_one_faster_in_a_batch_are_both_kept_and_routed():
    model = create("vblt", "tiny").eval()
    seen = []

    def workload(candidate, batch):
        dtype = next(candidate.parameters()).dtype
        seen.append((dtype, batch))
        time.sleep(SLEEP_MS[dtype][batch] / 1e3)
    forms, choice = choose_form(model, ("fp32", "bf16"), workload)
    assert {b for _, b in seen} == {1, 2, 4, 8}  # warmed up and timed at every batch class
    assert choice.by_batch == {1: "fp32", 2: "fp32", 4: "bf16", 8: "bf16"}
    assert set(forms) == {"fp32", "bf16"} and choice.chosen == "bf16"
    assert forms["fp32"] is model and next(forms["bf16"].parameters()).dtype == torch.bfloat16

    replica = object.__new__(ModelReplica.func_or_class)  # routing only: no Serve, no registry
    replica.forms, replica.choice, replica.stored = forms, choice, "fp32"
    replica.meta = {"version": "1", "precision": choice.chosen}
    assert [replica._model_for(b)[0] for b in (1, 2, 3, 5, 8)] == [
        "fp32", "fp32", "bf16", "bf16", "bf16"]
    assert replica._model_for(1)[1] is model
    assert replica._answer_meta(["fp32"])["precision"] == "fp32"
    assert replica._answer_meta(["fp32", "bf16", "fp32"])["precision"] == "fp32+bf16"
    replica.stored, replica.meta["precision"] = "w8a8", "w8a8"  # a quantized model: its storage
    assert replica._answer_meta(["bf16"])["precision"] == "w8a8"


def test_one_form_faster_everywhere_keeps_one_model():
    model = create("vblt", "tiny").eval()
    forms, choice = choose_form(model, ("fp32", "bf16"), lambda m, b: time.sleep(
        (1 if next(m.parameters()).dtype == torch.float32 else 10) * b / 1e3))
    assert list(forms) == ["fp32"] and set(choice.by_batch.values()) == {"fp32"}
    forms, choice = choose_form(model, ("fp32",), lambda m, b: None)
    assert list(forms) == ["fp32"] and choice.why() == "fp32: the only form considered"
    assert choice.by_batch == dict.fromkeys((1, 2, 4, 8), "fp32")


def test_forms_are_timed_up_to_the_deployments_max_batch_and_a_larger_one_is_warmed_live():
    """A deployment with max batch 1 times batch 1 only (its `compute` is batch 1's form), and
    a live user_config update to larger batches warms their classes before requests meet them;
    a rollout whose steps rode in both forms names them in one order."""
    model = create("vblt", "tiny").eval()
    seen = []

    def workload(candidate, batch):
        seen.append(batch)
        time.sleep(SLEEP_MS[next(candidate.parameters()).dtype].get(batch, 1.0) / 1e3)
    forms, choice = choose_form(model, ("fp32", "bf16"), workload, most=1)
    assert set(seen) == {1} and choice.by_batch == {1: "fp32"} and choice.chosen == "fp32"
    assert list(forms) == ["fp32"]

    replica = object.__new__(ModelReplica.func_or_class)
    replica.forms, replica.choice, replica.stored = forms, choice, "fp32"
    replica._workload, replica._warmed = workload, 1
    replica.meta = {"version": "1", "precision": "fp32"}
    seen.clear()
    replica.reconfigure({"max_batch_size": 16})
    assert seen == [2, 4, 8, 16] and replica._warmed == 16
    assert replica.batching["max_batch_size"] == 16
    seen.clear()
    replica.reconfigure({"max_batch_size": 4})  # smaller: already warm
    assert seen == []
    assert replica._answer_meta(["bf16", "fp32", "bf16"])["precision"] == "fp32+bf16"
