"""V-BLT presets in the model registry."""

from framecast.models.registry import register_model
from framecast.models.vblt import VBLT

VBLT_PRESETS = {
    # The paper: d = 384, 4x4x4 patches, 12 frames of 64x64 (GPU).
    "paper": {},
    # Trains to beat copy-last-frame in minutes on 2 CPU cores (the byte skip: benchmarks/
    # RESULTS.md, vblt_quality).
    "small": {"patch": (2, 4, 4), "byte_dim": 8, "conv_dim": 32, "dim": 96, "heads": 4,
              "global_layers": 3, "decoder_dim": 48, "decoder_heads": 2, "byte_skip": True},
    # `make demo`: small, one frame per time slice (each frame predicted from all earlier ones,
    # like copy-last-frame) and a copy prior, so 120 CPU steps already improve on copying.
    "demo": {"patch": (1, 4, 4), "byte_dim": 8, "conv_dim": 32, "dim": 96, "heads": 4,
             "global_layers": 3, "decoder_dim": 48, "decoder_heads": 2, "byte_skip": True,
             "copy_prior": 12.0},
    # Seconds: for tests.
    "tiny": {"patch": (2, 4, 4), "byte_dim": 4, "conv_dim": 8, "dim": 24, "heads": 2,
             "global_layers": 1, "decoder_dim": 12, "decoder_heads": 1, "mlp_ratio": 2.0,
             "byte_skip": True},
}


register_model("vblt", VBLT_PRESETS)(VBLT)
