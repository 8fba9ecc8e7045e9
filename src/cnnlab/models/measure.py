"""Size and cost of a model: parameter count and forward FLOPs, counted by torch's own FLOP counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those that require a gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of the forward pass of one image of `input_size` (C, H, W), in eval mode.

    Counted by torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products; a multiply-add is
    2 FLOPs). Works on meta-device models, where it costs no compute.
    """
    reference = next(model.parameters())
    image = torch.zeros(1, *input_size, device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
