"""The networks of the study, built from a RunSpec."""
from torch import nn


class MLP(nn.Sequential):
    """Flattened input [-> input Dropout] -> `depth` x (Linear to `width` units [-> BatchNorm] ->
    ReLU [-> Dropout]) -> Linear to 10 logits."""

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


class CNN(nn.Sequential):
    """The small convnet a reader asks about: per entry of `channels` a 3x3 conv -> 2x2 max-pool
    [-> BatchNorm] -> ReLU stage, then the MLP head above (one hidden layer of `width` units) on the
    flattened feature map, with dropout before and after it. Pooling before BatchNorm and ReLU
    (rather than after) runs them on a 4x smaller map, which makes every training step cheaper."""

    def __init__(self, channels=(32, 64), width: int = 256, dropout: float = 0.0, batchnorm: bool = True,
                 image_size: int = 28, classes: int = 10):
        layers, c_in, size = [], 1, image_size
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm), nn.MaxPool2d(2)]
            layers += [nn.BatchNorm2d(c_out)] if batchnorm else []
            layers += [nn.ReLU()]
            c_in, size = c_out, size // 2
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += list(MLP(1, width, dropout, batchnorm, in_features=c_in * size * size, classes=classes))
        super().__init__(*layers)


def build(spec, in_features: int = 28 * 28) -> nn.Module:
    """The MLP or CNN of `spec`; `in_features` is the size of one input (784 pixels). The transfer
    model is built by transfer.build, on top of these (train.build_model chooses)."""
    if spec.model == "mlp":
        return MLP(spec.depth, spec.width, spec.dropout, spec.batchnorm, spec.input_dropout, in_features)
    if spec.model == "cnn":
        return CNN(spec.channels, spec.width, spec.dropout, spec.batchnorm)
    raise ValueError(f"models.build makes mlp and cnn models, not {spec.model!r}")
