"""Batch-wise augmentation on image tensors, on whatever device they live: no per-sample Python.

A preset is a `+`-joined list of operations: `none`, `flip`, `crop`, `reflectcrop`, `randomresizedcrop`
(e.g. `flip+crop`). Each sample gets its own random parameters, drawn from a CPU `torch.Generator` the
loader seeds from (seed, epoch), so the augmented batches of an epoch are reproducible on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

CROP_PADDING = 4  # crop / reflectcrop: pad each side by this many pixels, then crop back at a random offset
RRC_SCALE = (
    0.25,
    1.0,
)  # randomresizedcrop: area share of the crop (torchvision's 0.08 is too harsh at 28 px)
RRC_RATIO = (3 / 4, 4 / 3)  # randomresizedcrop: aspect ratio range of the crop
OPERATIONS = ("flip", "crop", "reflectcrop", "randomresizedcrop")
_CROPS = {"crop", "reflectcrop", "randomresizedcrop"}


def parse_augment(preset: str) -> tuple[str, ...]:
    """The operations of a preset in the order they run; an unknown or contradictory one is a ConfigError."""
    if preset.strip() == "none":
        return ()
    parts = tuple(part.strip() for part in preset.split("+"))
    allowed = f"none or a +-joined list of {', '.join(OPERATIONS)} (e.g. flip+crop)"
    for part in parts:
        if part not in OPERATIONS:
            raise ConfigError(f"data.augment={preset!r}: unknown operation {part!r}; allowed: {allowed}")
    if len(set(parts)) != len(parts) or len(_CROPS.intersection(parts)) > 1:
        raise ConfigError(
            f"data.augment={preset!r} repeats an operation or combines two crops; allowed: {allowed}"
        )
    return tuple(op for op in (*sorted(_CROPS), "flip") if op in parts)


def augment_uint8(
    images: torch.Tensor, operations: tuple[str, ...], generator: torch.Generator
) -> torch.Tensor:
    """Apply the integer-exact operations (crops with padding, flip) to a uint8 (B, C, H, W) batch."""
    if "crop" in operations or "reflectcrop" in operations:
        images = random_crop(images, CROP_PADDING, generator, reflect="reflectcrop" in operations)
    if "flip" in operations:
        images = random_flip(images, generator)
    return images


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move per-sample random parameters (drawn on the CPU) to the images' device without a host sync:
    on CUDA through pinned memory, asynchronously, so the training loop never waits for the GPU."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    mask = to_device(torch.rand(images.shape[0], generator=generator) < 0.5, images.device)
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator, *, reflect: bool
) -> torch.Tensor:
    """Pad by `padding` (zeros or reflection) and crop back to size at a per-image random offset.

    The padded batch is viewed as every possible window (`unfold`, no copy) and one window per image is
    picked by advanced indexing, so the cost is one padded copy and one gather for the whole batch.
    """
    batch, _, height, width = images.shape
    offsets = to_device(torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator), images.device)
    if reflect:
        rows = _reflect(torch.arange(-padding, height + padding, device=images.device), height)
        cols = _reflect(torch.arange(-padding, width + padding, device=images.device), width)
        padded = images.index_select(2, rows).index_select(3, cols)
    else:
        padded = F.pad(images, (padding, padding, padding, padding))
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (B, C, 2p+1, 2p+1, H, W) view
    return windows[torch.arange(batch, device=images.device), :, offsets[:, 0], offsets[:, 1]]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map out-of-range indices back into [0, size) by reflection without repeating the edge (like F.pad)."""
    period = 2 * (size - 1) if size > 1 else 1
    folded = torch.remainder(index, period)
    return torch.where(folded >= size, period - folded, folded)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Crop a random area share and aspect per image, resized back (bilinear); float (B, C, H, W) in/out."""
    batch, _, height, width = images.shape
    area = torch.empty(batch).uniform_(*RRC_SCALE, generator=generator)
    log_ratio = torch.empty(batch).uniform_(
        math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator
    )
    ratio = log_ratio.exp()
    crop_w = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the width / height
    crop_h = (area / ratio).sqrt().clamp(max=1.0)
    centre = torch.rand(batch, 2, generator=generator)
    centre_x = (2 * centre[:, 0] - 1) * (1 - crop_w)  # normalised centre keeps the crop inside the image
    centre_y = (2 * centre[:, 1] - 1) * (1 - crop_h)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    theta = to_device(theta, images.device).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
