"""Pretrained weights: torchvision's files by weight name, and loading a backbone state_dict into a zoo model.

`load_pretrained` is the one way weights enter a model: it converts a weights file's layout where the model
family needs it (legacy keys, folded input transforms), adapts the stem kernel to the model's input channels
(1 channel: sum over RGB; other counts: tile and rescale, as timm's `adapt_input_conv`), skips a classifier
whose shape differs (the head was replaced for a new class count), and loads everything else strictly.
"""

from __future__ import annotations

import http.client
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights

from cnnlab.errors import ConfigError, WeightsError, unknown_choice
from cnnlab.models.registry import model_info
from cnnlab.safeio import load_checkpoint

RGB_CHANNELS = 3


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A stem kernel (out, 3, kh, kw) trained on RGB, adapted to `in_chans` input channels.

    1 channel: the sum over the RGB kernels (a gray image then gets the response the RGB net gives to the
    same image in colour-free RGB). Other counts: the RGB kernels tiled and scaled by 3/in_chans, keeping the
    expected activation size.
    """
    source = weight.shape[1]
    if source == in_chans:
        return weight
    if source != RGB_CHANNELS:
        raise WeightsError(
            f"cannot adapt a first conv trained on {source} input channel(s) to {in_chans}; only 3-channel "
            "(RGB) kernels adapt: init from weights trained on 3 channels, or train on "
            f"{source}-channel images"
        )
    as_float = weight.float()
    if in_chans == 1:
        adapted = as_float.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / RGB_CHANNELS)
        adapted = as_float.repeat(1, repeats, 1, 1)[:, :in_chans] * (RGB_CHANNELS / in_chans)
    return adapted.to(weight.dtype)


def load_pretrained(model: nn.Module, state_dict: dict[str, Any], *, name: str) -> list[str]:
    """Load a backbone state_dict into zoo model `name`; returns the keys it did not load.

    Not loaded: tensors of parts this layout does not have (ModelInfo.ignored_weight_prefixes, e.g.
    GoogLeNet's aux heads) and classifier tensors whose shape differs from the model's. Any other missing,
    unexpected or mis-shaped tensor is a WeightsError naming it, raised before the model is touched.
    """
    info = model_info(name)
    if getattr(model, "stem_kind", None) == "small":
        raise WeightsError(
            f"pretrained weights for {name} need the imagenet stem, but the model has the small stem; "
            "set model.stem=auto (the imagenet stem, at 64 px or more), imagenet or resize"
        )
    state = info.adapt_weights(dict(state_dict)) if info.adapt_weights else dict(state_dict)
    skipped = [key for key in state if key.startswith(info.ignored_weight_prefixes)]
    first_conv_key = f"{model.first_conv_path}.weight"
    if first_conv_key in state:
        state[first_conv_key] = _fit_first_conv(
            state[first_conv_key], model.get_first_conv(), name, first_conv_key
        )
    own = model.state_dict()
    classifier_keys = [f"{model.classifier_path}.{part}" for part in ("weight", "bias")]
    skipped += [key for key in classifier_keys if key in state and state[key].shape != own[key].shape]
    state = {key: value for key, value in state.items() if key not in skipped}
    _check_fits(state, own, set(skipped) & set(classifier_keys), name)
    model.load_state_dict(state, strict=False)
    return skipped


def _fit_first_conv(weight: torch.Tensor, conv: nn.Conv2d, name: str, key: str) -> torch.Tensor:
    """The weights' stem kernel adapted to the model's input channels; a different kernel size is an error."""
    if tuple(weight.shape[2:]) != tuple(conv.kernel_size):
        have, want = "x".join(map(str, weight.shape[2:])), "x".join(map(str, conv.kernel_size))
        raise WeightsError(
            f"weights for {name} have a {have} first conv ({key}) but the model's is {want}; "
            "these weights were made for another layout"
        )
    return adapt_input_conv(weight, conv.in_channels)


def _check_fits(state: dict[str, Any], own: dict[str, Any], replaced: set[str], name: str) -> None:
    """Raise a WeightsError naming the first missing, unexpected or mis-shaped tensors."""
    # BatchNorm fills a missing num_batches_tracked itself (files saved before torch 0.4.1 lack it)
    missing = sorted(
        key for key in set(own) - set(state) - replaced if not key.endswith("num_batches_tracked")
    )
    unexpected = sorted(set(state) - set(own))
    misshaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in state
        if key in own and hasattr(state[key], "shape") and state[key].shape != own[key].shape
    ]
    problems = [
        (f"{len(missing)} missing", missing),
        (f"{len(unexpected)} unexpected", unexpected),
        (f"{len(misshaped)} of another shape", misshaped),
    ]
    found = [
        f"{label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for label, keys in problems
        if keys
    ]
    if found:
        raise WeightsError(
            f"weights do not fit model {name}: {'; '.join(found)} tensors; init from weights saved from "
            f"{name} with the same switches (model.widths, model.blocks, ...) as this run"
        )


def torchvision_state_dict(name: str, weights: str) -> dict[str, Any]:
    """torchvision's pretrained state_dict `weights` (e.g. IMAGENET1K_V2 or DEFAULT) for model `name`.

    The file is downloaded into `torch.hub.get_dir()/checkpoints` only when missing there, and loaded through
    `cnnlab.safeio.load_checkpoint` (weights only). Offline, the WeightsError says where to get the file.
    """
    info = model_info(name)
    if not info.torchvision_weights:
        raise ConfigError(
            f"torchvision has no pretrained weights for model {name!r}; use init scratch or file:PATH"
        )
    enum = get_model_weights(name)
    member = weights.rsplit(".", 1)[-1]  # also accept torchvision's "ResNet50_Weights.IMAGENET1K_V2"
    if member not in enum.__members__:
        raise unknown_choice(f"torchvision weights for {name}", weights, enum.__members__)
    url = enum[member].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        _download(url, path, f"torchvision weights {enum[member].name} for {name}")
    return load_checkpoint(path)


def _download(url: str, path: Path, what: str) -> None:
    """Fetch `url` to `path` (torch.hub checks the hash in the file name); any failure is a WeightsError."""
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(path), hash_prefix=match.group(1) if match else None, progress=sys.stderr.isatty()
        )
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"{what} are not available offline ({reason[:120]}); download {url} elsewhere and pass "
            f"--init file:PATH (or put it at {path})"
        ) from None
