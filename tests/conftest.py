"""Shared test settings: CPU only, one thread per process, quiet Lightning."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("CNNLAB_QUIET", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
