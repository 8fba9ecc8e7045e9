"""The zoo as a table: each model's family, parameters and GFLOPs at an input size, and pretrained weights.

Models are built on the meta device, so listing the whole zoo (VGG-19 and DenseNet-264 included) allocates no
weights and takes seconds. `cnnlab models` prints this table or its JSON form.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch

from cnnlab.errors import ConfigError, first_line
from cnnlab.models.measure import count_flops, count_params
from cnnlab.models.registry import create_model, list_models, model_info, resolve_stem

_INPUT_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class ZooRow:
    """One model of the listing, built for `input_size` with `num_classes` outputs."""

    name: str
    family: str
    source: str  # torchvision | cnnlab
    input_size: tuple[int, int, int]  # (C, H, W) fed to the model
    stem: str | None  # imagenet | small for ImageNet-shaped nets, else None
    num_classes: int
    params: int | None  # None when the model cannot be built for this input (see note)
    gflops: float | None  # None when the model cannot take this input (see note)
    pretrained: tuple[str, ...]  # torchvision weight names
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (input size as 'CxHxW')."""
        row = dataclasses.asdict(self)
        row["input_size"] = "x".join(map(str, self.input_size))
        row["pretrained"] = list(self.pretrained)
        return row


def parse_input_size(text: str, key: str = "--input-size") -> tuple[int, int, int]:
    """'1x28x28' → (1, 28, 28); anything else is a ConfigError naming `key` and the expected form."""
    match = _INPUT_SIZE.match(str(text))
    if not match or min(int(part) for part in match.groups()) < 1:
        raise ConfigError(f"{key} {text!r} is not CxHxW with positive integers; e.g. 1x28x28 or 3x224x224")
    channels, height, width = (int(part) for part in match.groups())
    if height != width:
        raise ConfigError(
            f"{key} {text!r} is not square; the zoo takes square inputs, e.g. {channels}x{height}x{height}"
        )
    return channels, height, width


def describe_model(
    name: str, *, input_size: tuple[int, int, int] | None = None, num_classes: int | None = None
) -> ZooRow:
    """Parameters and GFLOPs of one model, at its default input size or at `input_size` (stem chosen as
    model.stem=auto would), with `num_classes` outputs (default: the model's native class count)."""
    info = model_info(name)
    if input_size is None:
        stem = "imagenet" if info.imagenet_shaped else None
        size = info.default_input_size
    else:
        stem, side = resolve_stem(name, "auto", input_size[-1])
        size = (input_size[0], side, side)
    classes = num_classes if num_classes is not None else info.native_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {classes!r}")
    params, gflops, note = None, None, None
    try:  # a layout that cannot take this input fails while it is built (lenet5) or run (pooling to 0x0)
        with torch.device("meta"):
            model = create_model(name, num_classes=classes, in_chans=size[0], stem=stem, image_size=size[-1])
        params = count_params(model)
        gflops = count_flops(model, size) / 1e9
    except ConfigError as error:  # says what is wrong: a too small input, a plugin's builder that failed
        note = first_line(error)
    except Exception as error:  # noqa: BLE001  (a forward that cannot run; a plugin's raises anything)
        note = f"cannot take a {'x'.join(map(str, size))} input: {first_line(error)[:100]}"
    return ZooRow(
        name=name,
        family=info.family,
        source=info.source,
        input_size=size,
        stem=stem,
        num_classes=classes,
        params=params,
        gflops=gflops,
        pretrained=info.torchvision_weights,
        note=note,
    )


def describe_zoo(
    names: Sequence[str] | None = None,
    *,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> list[ZooRow]:
    """describe_model for the named models (default: the whole zoo, in list_models order)."""
    chosen = dict.fromkeys(names) if names else list_models()  # a name given twice is listed once
    return [describe_model(n, input_size=input_size, num_classes=num_classes) for n in chosen]


def format_gflops(gflops: float | None) -> str:
    """GFLOPs with four significant digits ('-' when not computable)."""
    return "-" if gflops is None else f"{gflops:.4g}"


def format_zoo_table(rows: Sequence[ZooRow]) -> str:
    """A plain-text table of the rows: name, family, input, params, GFLOPs, pretrained weights."""
    header = ("name", "family", "input", "params", "GFLOPs", "pretrained weights")
    lines = [
        (
            row.name,
            row.family,
            "x".join(map(str, row.input_size)) + (f" {row.stem} stem" if row.stem else ""),
            "-" if row.params is None else f"{row.params:,}",
            format_gflops(row.gflops),
            ", ".join(row.pretrained) or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    right_aligned = {3, 4}
    rendered = [
        "  ".join(
            cell.rjust(w) if i in right_aligned else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in [header, *lines]
    ]
    notes = [f"{row.name}: {row.note}" for row in rows if row.note]
    return "\n".join(rendered + (["", "GFLOPs = 2 x multiply-adds of one forward pass.", *notes]))
