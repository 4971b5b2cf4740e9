"""VQ-ViT-style quantization (paper 003): int8 quantizers and a real W8A8 linear layer."""
