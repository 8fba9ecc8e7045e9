"""Grad-CAM (Selvaraju et al., 2017) on torch hooks: which part of an image the last conv feature map used.

The target is the model's last convolutional feature map: the last module output in the forward pass that is
4-D with more than one spatial position (adaptive pooling, which only squeezes or stretches a map, excluded),
found by one probe pass. The class score's gradient, averaged over space, weights the map's channels; the
positive part of the weighted sum, upsampled to the input and scaled to [0, 1] per image, is the map. A model
without such a map (an MLP) gets None, never an error. The maintained `grad-cam` package would pull in
OpenCV and ttach, so these few lines stand in for it (tests/test_gradcam.py checks them on known maps).

`explain_images` is `cnnlab explain`: Grad-CAM overlays of a folder of the user's own images, one PNG each.
"""

from __future__ import annotations

import dataclasses
import io as bytes_io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import nn

from cnnlab import safeio
from cnnlab.data import InMemoryLoader
from cnnlab.data.imageset import resize_images
from cnnlab.errors import ConfigError, printable
from cnnlab.train.inference import check_images_folder, load_model, read_model_images

ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
EXPLAIN_BATCH = 32  # images per forward/backward pass in `explain_images`
OVERLAY_SIDE = 224  # side of each panel of an explain PNG
OVERLAY_ALPHA = 0.45  # weight of the heat map over the image
OVERLAY_SIZE = (2 * OVERLAY_SIDE + 8, OVERLAY_SIDE + 30)  # width, height of an explain PNG
OVERLAY_MARK_KEY, OVERLAY_MARK = "Software", "cnnlab explain"  # PNG text chunk of every overlay
COLORMAP = "jet"
MAX_NAME_BYTES = 200  # an overlay's file stem, in UTF-8 bytes (file systems allow 255 with the suffix)


@dataclasses.dataclass(frozen=True)
class GradCam:
    """Grad-CAM maps of a batch and the predictions they explain."""

    maps: np.ndarray  # (N, H, W) float32 in [0, 1], at the input's side
    probs: np.ndarray  # (N, K) float32 softmax probabilities
    classes: np.ndarray  # (N,) int64 the class each map explains


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One image `cnnlab explain` wrote: its name, prediction and overlay file."""

    name: str
    predicted: str
    probability: float
    path: Path


def feature_map_module(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The module whose output is the model's last conv feature map (None when it has none)."""
    found: list[nn.Module] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if _is_feature_map(output) and not isinstance(module, ADAPTIVE_POOLS):
            found.append(module)

    handles = [module.register_forward_hook(record) for module in model.modules() if module is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return found[-1] if found else None


def grad_cam(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | None = None) -> GradCam | None:
    """Grad-CAM of `classes` (default: each image's predicted class) for normalized float inputs (N, C, H, W).

    The model is put in eval mode; None when it has no conv feature map.
    """
    model.eval()
    target = feature_map_module(model, inputs[:1])
    if target is None:
        return None
    kept: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        kept["map"] = output
        return output.clone()  # later in-place ops (ReLU(inplace=True)) change the clone, not the kept map

    handle = target.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True)).float()
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, chosen[:, None]).sum()  # images are independent in eval mode
            (gradient,) = torch.autograd.grad(score, kept["map"])
    finally:
        handle.remove()
    activation = kept["map"].detach().float()
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return GradCam(
        maps=cam.cpu().numpy().astype(np.float32),
        probs=torch.softmax(logits.detach(), dim=1).cpu().numpy().astype(np.float32),
        classes=chosen.detach().cpu().numpy().astype(np.int64),
    )


def explain_uint8(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> GradCam | None:
    """Grad-CAM of the predicted class for uint8 images (N, C, H, W), normalized as in training."""
    loader = InMemoryLoader(
        images,
        torch.zeros(len(images), dtype=torch.int64),
        batch_size=max(1, len(images)),
        mean=mean,
        std=std,
        device=device,
    )
    batch, _ = next(iter(loader))
    return grad_cam(model.to(device), batch)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3): the image (C, H, W; grey or RGB) under the heat map (H, W in [0, 1])."""
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    heat = colormaps[COLORMAP](np.clip(cam, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * rgb.transpose(1, 2, 0).astype(np.float32) + alpha * heat
    return np.rint(blended).clip(0, 255).astype(np.uint8)


def explain_images(checkpoint: str | Path, images: str | Path, out_dir: str | Path) -> list[Explanation]:
    """`cnnlab explain`: for each image file in `images` (subfolders included), `<out_dir>/<stem>.png`
    (`<subfolder>_<stem>.png` below the top) with the image beside its
    Grad-CAM overlay of the predicted class and the prediction written below."""
    check_images_folder(images, dataset_allowed=False)  # before Path(""), which is the working directory
    if not str(out_dir).strip():
        raise ConfigError("--out is empty; give a folder for the overlay PNGs, e.g. --out cams/")
    checkpoint, images, out_dir = Path(checkpoint), Path(images), Path(out_dir)
    if not checkpoint.exists():
        raise ConfigError(
            f"--checkpoint {checkpoint}: not found; give a run directory, a checkpoint file or an export"
        )
    _check_out_folder(out_dir, images)
    trained = load_model(checkpoint)
    meta = trained.meta
    files, pixels = read_model_images(trained, images)
    ids = [file.as_posix() for file in files]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = _unique_names([file.with_suffix("").as_posix() for file in files])  # cat/0.png -> cat_0
    _check_no_foreign_files(out_dir, names)  # before the first overlay is written
    written = []
    for start in range(0, len(ids), EXPLAIN_BATCH):
        batch = pixels[start : start + EXPLAIN_BATCH]
        cams = explain_uint8(
            trained.model, batch, mean=tuple(meta["mean"]), std=tuple(meta["std"]), device=device
        )
        if cams is None:
            raise ConfigError(f"model {meta['model']} has no convolutional feature map; Grad-CAM needs one")
        for row in range(len(batch)):
            index = start + row
            predicted = printable(trained.class_names[int(cams.classes[row])])
            probability = float(cams.probs[row, cams.classes[row]])
            name = printable(ids[index])
            caption = f"{name}: predicted {predicted} ({probability:.1%}); Grad-CAM of {predicted}"
            png = _overlay_png(batch[row], cams.maps[row], caption)
            path = safeio.atomic_write_bytes(out_dir / f"{names[index]}.png", png)
            written.append(Explanation(name, predicted, probability, path))
    return written


def _check_out_folder(out_dir: Path, images: Path) -> None:
    """`explain --out` is a folder (new, or existing) outside the --images folder: overlays written inside
    it would be read as images by the next `explain` or `predict` of that folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the overlay PNGs")
    resolved, source = out_dir.resolve(), images.resolve()
    if resolved == source:
        raise ConfigError(f"--out {out_dir} is the --images folder; write the overlays to another folder")
    if source in resolved.parents:
        raise ConfigError(
            f"--out {out_dir} is inside the --images folder {images}, so its overlays would be read as "
            f"images next time; write them to a folder outside it, e.g. {source.name or 'images'}-explained"
        )


def _check_no_foreign_files(out_dir: Path, names: list[str]) -> None:
    """Refuse, before anything is written, to replace a file in `out_dir` that is not an overlay `explain`
    wrote (a photo of the user's that happens to have an overlay's name)."""
    taken = [f"{name}.png" for name in names if os.path.lexists(out_dir / f"{name}.png")]
    foreign = [name for name in taken if not _is_overlay(out_dir / name)]
    if foreign:
        shown = ", ".join(printable(name) for name in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"--out {out_dir} holds {len(foreign)} file(s) that are not overlays written by cnnlab explain "
            f"but have an overlay's name ({shown}); cnnlab replaces only its own overlays: give a new or "
            "empty folder"
        )


def _is_overlay(path: Path) -> bool:
    """A PNG `_overlay_png` wrote: marked so in its text chunk, or (written before the mark) its size."""
    if not path.is_file():  # a folder, a dangling link, a FIFO (opening one would wait for a writer)
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return False
            marked = getattr(image, "text", {}).get(OVERLAY_MARK_KEY) == OVERLAY_MARK
            return marked or (image.mode == "RGB" and image.size == OVERLAY_SIZE)
    except Exception:  # noqa: BLE001 - whatever Pillow raises for a damaged file: not ours, so never replaced
        return False


def _overlay_png(image: torch.Tensor, cam: np.ndarray, caption: str) -> bytes:
    """The image and its Grad-CAM overlay side by side, enlarged to OVERLAY_SIDE, with a caption below."""
    side = OVERLAY_SIDE
    enlarged = resize_images(image[None], side)[0].numpy()
    big_cam = F.interpolate(torch.from_numpy(cam)[None, None], size=(side, side), mode="bilinear")[0, 0]
    plain = np.repeat(enlarged, 3, axis=0) if enlarged.shape[0] == 1 else enlarged
    canvas = Image.new("RGB", OVERLAY_SIZE, "white")
    canvas.paste(Image.fromarray(plain.transpose(1, 2, 0)), (0, 0))
    canvas.paste(Image.fromarray(overlay(enlarged, big_cam.numpy())), (side + 8, 0))
    ImageDraw.Draw(canvas).text((4, side + 8), caption, fill="black", font=ImageFont.load_default(size=13))
    buffer = bytes_io.BytesIO()
    marked = PngInfo()
    marked.add_text(OVERLAY_MARK_KEY, OVERLAY_MARK)  # how a later run knows the file for its own
    canvas.save(buffer, format="PNG", pnginfo=marked)
    return buffer.getvalue()


def _unique_names(stems: list[str]) -> list[str]:
    """File-name-safe output stems, one per input (`a.jpg` and `a.png` become `a` and `a-2`)."""
    names, used = [], set()
    for stem in stems:
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem) or "image"
        base = f"_{base[1:]}" if base.startswith("-") else base  # `-x.png` would read as an option in a shell
        base = base.encode()[:MAX_NAME_BYTES].decode(errors="ignore")  # deep folders: a name fits the disk
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}-{count}"
        used.add(name)
        names.append(name)
    return names


def _is_feature_map(output: object) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2] * output.shape[-1] > 1
