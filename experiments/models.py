"""The networks of the study, built from a RunSpec."""
from torch import nn


class MLP(nn.Sequential):
    """28x28 image [-> input Dropout] -> `depth` x (Linear to `width` units [-> BatchNorm] -> ReLU
    [-> Dropout]) -> Linear to 10 logits."""

    def __init__(self, depth: int = 2, width: int = 256, dropout: float = 0.0, batchnorm: bool = False,
                 input_dropout: float = 0.0, in_features: int = 28 * 28, classes: int = 10):
        layers, size = [nn.Flatten()], in_features
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        for _ in range(depth):
            # BatchNorm's own shift makes the Linear's bias redundant
            layers.append(nn.Linear(size, width, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, classes))
        super().__init__(*layers)


def build(spec) -> nn.Module:
    if spec.model == "mlp":
        return MLP(spec.depth, spec.width, spec.dropout, spec.batchnorm, spec.input_dropout)
    raise ValueError(f"unknown model {spec.model!r}")
