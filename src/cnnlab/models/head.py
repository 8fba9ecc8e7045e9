"""One head interface for every model, so fine-tuning, probing and ensembles never touch `fc` vs `classifier`.

A model is `forward_head(forward_features(x))`: `forward_features` returns the pooled `(N, num_features)`
input of the final linear layer, `forward_head` applies the head dropout and that layer. `classifier_path` is
the attribute path of the final linear layer (its state_dict prefix) and `first_conv_path` that of the stem
convolution, so weight loading can find both without knowing the architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import ConfigError


class ClassifierHeadMixin:
    """Mixed into every zoo model (before the nn.Module base) to give it the uniform head interface."""

    classifier_path: str = "fc"  # attribute path of the final nn.Linear
    first_conv_path: str = "conv1"  # attribute path of the first nn.Conv2d (sees the input channels)
    stem_kind: str | None = (
        None  # imagenet | small on ImageNet-shaped nets (pretrained weights need imagenet)
    )
    head_drop: nn.Module  # dropout before the classifier (nn.Identity when off)
    num_features: int  # width of forward_features' output = in_features of the classifier

    def _init_head(self, dropout: float) -> None:
        """Record num_features from the classifier itself and set the head dropout (0 means none)."""
        self.num_features = self.get_classifier().in_features
        self.head_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) that the classifier sees."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features: head dropout, then the classifier."""
        return self.get_classifier()(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (what a linear probe trains)."""
        return self.get_submodule(self.classifier_path)

    def get_first_conv(self) -> nn.Conv2d:
        """The stem convolution (what in_chans adaptation changes)."""
        return self.get_submodule(self.first_conv_path)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer by a fresh one with `num_classes` outputs; the features stay."""
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        old = self.get_classifier()
        new = nn.Linear(self.num_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        self.set_submodule(self.classifier_path, new)
