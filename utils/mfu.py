"""Model FLOPs utilization: achieved model FLOP/s over the device's peak dense bf16 FLOP/s."""
from __future__ import annotations

import torch

# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from the vendor data sheets (SXM parts).
_PEAK_BF16 = (
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
)


def peak_flops_for_name(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None if unknown."""
    upper = device_name.upper()
    for key, flops in _PEAK_BF16:
        if key in upper:
            return flops
    return None


def device_peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: override_tflops * 1e12 if > 0, else the table for known GPUs, else None."""
    if override_tflops < 0:
        raise ValueError(f"override_tflops must be >= 0 (got {override_tflops}); pass the device's peak "
                         f"dense TFLOP/s, or 0 to look it up")
    if override_tflops > 0:
        return float(override_tflops) * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def compute_mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Fraction of peak achieved; None when the peak is unknown.

    tokens_per_s and peak must describe the same hardware: per-device throughput with one device's peak
    (or global throughput with world_size times the peak).
    """
    if peak is None or peak <= 0:
        return None
    return flops_per_token * tokens_per_s / peak
