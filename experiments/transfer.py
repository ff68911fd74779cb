"""Transfer learning: an ImageNet ResNet (torchvision) with our MLP head on top.

Two ways to train it (RunSpec.train_backbone):
  none    the backbone is frozen, so its features are computed once per split and cached in
          build/features/; the head then trains through the usual engine loop on float feature
          rows in seconds per epoch. Batch augmentation cannot apply: the cached features are of
          the unaugmented images (spec.augment is ignored).
  layer4  the whole network is the model; the stages before layer4 are frozen (no gradients,
          BatchNorm in eval mode) and layer4 + head are fine-tuned on the uint8 images with the
          engine's usual batch augmentation.
Weights are torchvision's official IMAGENET1K_V1 files, taken from torch.hub's cache
(TORCH_HOME) or --weights, and checked against the SHA-256 prefix in their published file name.
"""
from __future__ import annotations

import hashlib
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from . import results
from .data import DataError, FashionMNIST, Split
from .models import MLP

FEATURES_DIR = Path(__file__).resolve().parent.parent / "build" / "features"
URLS = {name: torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        for name in ("resnet18", "resnet50", "resnet101")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT = 20      # seconds without a byte before giving up (no internet: fails at once)
FEATURE_BATCH = 512

_verified: dict[str, tuple[Path, str]] = {}   # backbone -> (weight file, its SHA-256), set by weights_file()


class Unavailable(DataError):
    """The ImageNet weights cannot be had here; the CLI prints the message and exits 1."""


def published(backbone: str) -> tuple[str, str, str]:
    """(file name, URL, SHA-256 prefix) of torchvision's weights: the prefix is the 8 hex digits in
    the file name, which torch.hub's own check_hash compares too."""
    url = URLS[backbone]
    name = url.rsplit("/", 1)[-1]
    return name, url, torch.hub.HASH_REGEX.search(name).group(1)


def cache_path(backbone: str) -> Path:
    """Where torchvision keeps (and looks for) the file: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / published(backbone)[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, backbone: str) -> str:
    name, _, prefix = published(backbone)
    digest = sha256(path)
    if not digest.startswith(prefix):
        raise Unavailable(f"{path} is not torchvision's {name}: its SHA-256 starts with {digest[:len(prefix)]}, "
                          f"expected {prefix}. Delete it and get the original file (see `{fetch_command(backbone)}`).")
    return digest


def fetch_command(backbone: str) -> str:
    return (f"python -c \"import torchvision; torchvision.models.{backbone}"
            f"(weights='IMAGENET1K_V1')\"")


def _download(backbone: str, dst: Path) -> None:
    """torch.hub's download into a temp folder, moved into the cache only when complete and verified."""
    _, url, prefix = published(backbone)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / dst.name
            torch.hub.download_url_to_file(url, str(part), hash_prefix=prefix, progress=False)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(part, dst)
    finally:
        socket.setdefaulttimeout(old)


def weights_file(backbone: str, path: Path | None = None) -> tuple[Path, str]:
    """The verified weight file and its SHA-256: `path` when given, else torch.hub's cache, else a
    download into that cache. Raises Unavailable with what to do when none of these works."""
    if backbone in _verified and (path is None or Path(path).expanduser() == _verified[backbone][0]):
        return _verified[backbone]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise Unavailable(f"--weights {path}: no such file")
    else:
        path = cache_path(backbone)
        if not path.is_file():
            try:
                _download(backbone, path)
            except Exception as err:   # no internet: urllib raises many kinds of errors
                name, url, _ = published(backbone)
                raise Unavailable(
                    f"the {backbone} ImageNet weights {name} are not in torchvision's cache and the download "
                    f"failed ({type(err).__name__}). Put the file at {path} (or pass --weights PATH). On a "
                    f"machine with internet run `{fetch_command(backbone)}` and copy {name} from its "
                    f"~/.cache/torch/hub/checkpoints/, or download {url}") from None
    _verified[backbone] = (path, _check(path, backbone))
    return _verified[backbone]


def backbone(spec) -> tuple[nn.Module, int]:
    """The ImageNet ResNet of `spec` with its classifier removed, so it returns the [N, D] globally
    average-pooled features of the penultimate layer, and D."""
    net = getattr(torchvision.models, spec.backbone)(weights=None)
    net.load_state_dict(torch.load(weights_file(spec.backbone)[0], map_location="cpu", weights_only=True))
    dim, net.fc = net.fc.in_features, nn.Identity()
    return net, dim


class Preprocess(nn.Module):
    """[N, 1, 28, 28] pixels in [0, 1] -> [N, 3, S, S] as ImageNet models expect: bilinear resize,
    grey repeated to 3 channels, ImageNet mean/std. Runs on the device, per batch."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std


class FineTune(nn.Module):
    """Preprocess -> ResNet (only layer4 trainable) -> MLP head."""

    def __init__(self, spec):
        super().__init__()
        self.preprocess = Preprocess(spec.image_size)
        self.backbone, dim = backbone(spec)
        self.head = head(spec, dim)
        for name, child in self.backbone.named_children():
            if name != "layer4":
                child.requires_grad_(False)

    def train(self, mode: bool = True):
        """fit() calls train() every epoch: the frozen stages' BatchNorm must keep ImageNet's statistics."""
        super().train(mode)
        for name, child in self.backbone.named_children():
            if name != "layer4":
                child.eval()
        return self

    def forward(self, x):
        return self.head(self.backbone(self.preprocess(x)))


def head(spec, in_features: int) -> MLP:
    return MLP(spec.depth, spec.width, spec.dropout, spec.batchnorm, spec.input_dropout, in_features)


def unavailable(specs: dict, weights: Path | None = None) -> list[str]:
    """The catalog's check hook: what this machine lacks to run `specs` (the ImageNet weight file of
    each backbone), one line each, checked before any work so nothing is written without them."""
    missing = []
    for backbone in sorted({s.backbone for s in specs.values() if s.model == "transfer"}):
        try:
            weights_file(backbone, weights)
        except Unavailable as err:
            missing.append(str(err))
    return missing


def build(spec, in_features: int) -> nn.Module:
    """The model fit() trains: the head alone on cached features, or the fine-tuned network."""
    return head(spec, in_features) if spec.train_backbone == "none" else FineTune(spec)


def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.cpu().contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def features(spec, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Backbone features [N, D] (float32, on `device`) of uint8 images [N, 28, 28], from
    build/features/ when this backbone, weight file, image size and these exact images were seen
    before, else computed and saved (temp file + rename)."""
    digest = weights_file(spec.backbone)[1]
    path = FEATURES_DIR / f"{spec.backbone}-{digest[:16]}-{spec.image_size}px-{images_digest(images)[:16]}.pt"
    if path.is_file():
        return torch.load(path, map_location=device, weights_only=True)
    net = nn.Sequential(Preprocess(spec.image_size), backbone(spec)[0]).to(device).eval()
    out = torch.cat([net(images[i:i + FEATURE_BATCH].to(device).unsqueeze(1).float().div(255)).float()
                     for i in range(0, len(images), FEATURE_BATCH)])
    with results.replacing(path) as tmp:
        torch.save(out.cpu(), tmp)
    return out


def prepare(spec, data: FashionMNIST, device: torch.device, weights: Path | None = None) -> FashionMNIST:
    """The data fit() should see for this variant. Frozen backbone: every split's images replaced
    by their cached features. Fine-tuning: the same images, with the engine's normalisation made
    the identity (mean 0, std 1) so batches reach Preprocess as [0, 1] pixels, augmented as usual."""
    weights_file(spec.backbone, weights)
    if spec.train_backbone != "none":
        return replace(data, mean=0.0, std=1.0)
    feats = lambda s: Split(features(spec, s.images, device), s.labels)  # noqa: E731
    return FashionMNIST(feats(data.train), feats(data.val), feats(data.test), data.mean, data.std,
                        f"{data.source} -> frozen {spec.backbone} features at {spec.image_size} px")
