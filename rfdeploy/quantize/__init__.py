"""Deployment at reduced precision: int8 quantization (calibration, mixed precision) and bf16/fp16, each checked by SNR."""
