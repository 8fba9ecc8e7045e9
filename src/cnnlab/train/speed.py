"""Speed settings of a run that change how fast it trains, never what it computes.

Findings behind them are in benchmarks/RESULTS.md (profiles of `fit` on two CPU cores):
- glibc returns every large freed block to the kernel, so each training step page-faults its activations
  back in (about 30,000 minor faults and a quarter of lenet5's step time on CPU); keeping freed memory in
  the heap removes that;
- `torch.compile` pays only for long runs (tens of seconds of compilation on two cores for a few percent),
  so it is an option (`train.compile`), off by default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

import torch
from torch import nn

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the heap, so freeing them keeps the pages
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # never shrink the heap between steps


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed tensor memory for reuse instead of unmapping it (once per process).

    Returns whether the setting took effect (False off Linux/glibc). Memory stays at the peak working set,
    which a training process reaches every step anyway.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def compiled_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile` of the model's forward only, so the model's modules and state_dict keys stay as they
    are (compiling the module itself would prefix every key with `_orig_mod.`)."""
    return torch.compile(model.forward)
