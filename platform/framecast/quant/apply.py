"""Apply a precision plan to any model of the common interface: swap its linear layers.

Nothing here knows V-BLT. A layer's role (for the progressive schedule) comes from the module that
holds it: its class lists `quant_roles = {child name: role}` (`layers.MLP`: "mlp";
`layers.Attention`: "attn_out" for `out`, "qkv" for `q`/`kv`; NBP's SwiGLU and attention
likewise); everything else (patch embeddings, decoder context, output head) is "embed_head".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from framecast.quant.gemm_form import linearize
from framecast.quant.int8 import HalfLinear, Int8Embedding, Int8Linear
from framecast.quant.learnable import QATLinear
from framecast.quant.plan import PlanEntry, Precision

# VQ-ViT's progressive order: the least harmful first, the output-defining layers last.
STAGES = ("mlp", "attn_out", "qkv", "embed_head")
LINEAR_TYPES = (nn.Linear, QATLinear, Int8Linear, HalfLinear)


def layer_roles(model: nn.Module) -> dict[str, str]:
    """{linear layer name: stage} for every linear layer (float, training or deployed): the role
    its parent module lists in `quant_roles`, else "embed_head"."""
    roles = {}
    for parent_name, parent in model.named_modules():
        listed = getattr(parent, "quant_roles", {})
        for child_name, child in parent.named_children():
            if isinstance(child, LINEAR_TYPES):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                roles[name] = listed.get(child_name, "embed_head")
    return roles


def replace_layers(model: nn.Module, names: Iterable[str],
                   make: Callable[[str, nn.Module], nn.Module]) -> None:
    """Swap each named submodule of `model` for `make(name, old module)`, in place."""
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, make(name, getattr(parent, child_name)))


def to_training(model: nn.Module, entries: Iterable[PlanEntry]) -> None:
    """Put the planned layers under fake quantization (QATLinear) at their precision; a layer
    already in training mode is re-planned from its current float weights."""
    plan = {e.layer: e.precision for e in entries}

    def make(name: str, layer: nn.Module) -> nn.Module:
        linear = layer.as_linear() if isinstance(layer, QATLinear) else layer
        return QATLinear(linear, plan[name])
    replace_layers(model, plan, make)


def to_deployed(model: nn.Module) -> None:
    """Freeze every QATLinear into the module that really stores its precision (int8 or fp16),
    and store the model's embedding tables as int8 rows."""
    names = [n for n, m in model.named_modules() if isinstance(m, QATLinear)]
    replace_layers(model, names, lambda _, layer: layer.to_deployed())
    replace_layers(model, embedding_tables(model),
                   lambda _, table: Int8Embedding.from_float(table))


def embedding_tables(model: nn.Module) -> list[str]:
    """The float embedding tables of the model itself, not of its components (a generator's
    tokenizer stays as trained). A lookup table is no GEMM: int8 rows only shrink it (NBP's
    token table is 15% of the generator; V-BLT's copy prior 256x256), at half a row's scale of
    error per value."""
    parts = tuple(f"{a}." for a in getattr(model, "components", dict)())
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and not name.startswith(parts)]


def quantize_model(model: nn.Module, plan: list[PlanEntry]) -> nn.Module:
    """Post-training quantization without fine-tuning: linearize patch convolutions, then give
    every planned linear layer its precision. Changes `model` in place and returns it."""
    linearize(model)
    to_training(model, plan)
    to_deployed(model)
    return model.eval()


def empty_quantized(model: nn.Module, plan: list[PlanEntry],
                    int8_tables: Iterable[str] = (),
                    saved_keys: Iterable[str] | None = None) -> nn.Module:
    """The deployed structure of `plan` on a freshly built float model, ready for
    `load_state_dict` of a saved quantized model (no calibration, no data); `int8_tables`: the
    embedding tables saved as int8 rows (models quantized before those were kept in float);
    `saved_keys`: the saved state's keys, whose names tell which per-frame convolutions were
    saved as linears (all of them when not given; none in models quantized before they were)."""
    precisions = {e.layer: e.precision for e in plan}
    frame_convs = None
    if saved_keys is not None:
        linears = {key.rpartition(".proj.")[0] for key in saved_keys if ".proj." in key}
        frame_convs = linears.__contains__
    linearize(model, frame_convs=frame_convs)
    replace_layers(model, int8_tables, lambda _, table: Int8Embedding(table.num_embeddings,
                                                                        table.embedding_dim))

    def make(name: str, linear: nn.Linear) -> nn.Module:
        args = (linear.in_features, linear.out_features, linear.bias is not None)
        if precisions[name] is Precision.FP16:
            return HalfLinear(*args)
        return Int8Linear(*args, asymmetric=precisions[name] is Precision.INT8_ASYM)
    replace_layers(model, precisions, make)
    return model


def state_bytes(model: nn.Module, components: bool = True) -> int:
    """Bytes of every tensor the model stores (parameters and buffers): what a saved copy holds;
    with `components=False`, without those of its components (a generator's tokenizer)."""
    parts = () if components else tuple(f"{a}." for a in getattr(model, "components", dict)())
    return sum(t.numel() * t.element_size() for name, t in model.state_dict().items()
               if not name.startswith(parts))


def precision_counts(model: nn.Module) -> dict[str, int]:
    """How many linear layers run at each precision (fp32 for those left in float)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, Int8Linear):
            kind = Precision.INT8_ASYM.value if module.asymmetric else Precision.INT8.value
        elif isinstance(module, HalfLinear):
            kind = Precision.FP16.value
        elif isinstance(module, nn.Linear):
            kind = "fp32"
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    return counts



QUANTIZED_TYPES = (Int8Linear, HalfLinear, Int8Embedding)


def to_bf16(model: nn.Module) -> nn.Module:
    """The model's float compute in bf16, in place: its float weights and buffers become bf16.
    Quantized layers keep what they store (int8 or fp16 weights, float32 scales) and take and
    return bf16 (each chooses its own compute form, `kernels.layer_mode`); the model's
    components (a generator's tokenizer) stay as trained. For CPUs with native bf16 (or
    CUDA): elsewhere bf16 math is a slow emulation."""
    import torch

    parts = tuple(getattr(model, "components", dict)())

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16) if t.is_floating_point() else t

    for name, module in model.named_modules():
        if any(name == p or name.startswith(f"{p}.") for p in parts):
            continue
        if isinstance(module, Int8Embedding):
            module.compute_dtype = torch.bfloat16
            module._wide = {}
        elif not isinstance(module, QUANTIZED_TYPES):
            module._apply(convert, recurse=False)
    return model
