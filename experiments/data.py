"""Find, verify and load Fashion-MNIST, split it, and make input batches on the device.

Lookup order (the first that applies wins, and the run says which it used):
  1. $FASHION_MNIST_DIR: a folder of the four IDX files, gzipped or not (used alone when set:
     we never fall back or download over a folder the user named);
  2. the project's git-ignored copy in data/FashionMNIST/raw (torchvision's layout);
  3. Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist);
  4. torchvision's download, where there is internet.
Every file is checked by the SHA-256 of its uncompressed bytes against the published originals,
then copied (uncompressed) into data/FashionMNIST/raw so torchvision's own FashionMNIST class works
on it (the bench's tutorial loop). The engine parses the verified bytes itself: importing
torchvision costs seconds a process.  Never a synthetic stand-in.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .results import PROJECT_ROOT, write_atomic

DATA_ROOT = PROJECT_ROOT / "data"                      # torchvision's `root`
RAW_DIR = DATA_ROOT / "FashionMNIST" / "raw"           # where torchvision keeps the IDX files
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"

# SHA-256 of the uncompressed originals (Debian recompressed the .gz files, so their MD5s differ
# from torchvision's; the uncompressed bytes are identical to the published data set).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
VAL_PER_CLASS = 600        # 6,000 validation images: 10% of each class of the 60k training set
SPLIT_SEED = 0             # the split is fixed forever; run seeds never change it
FIX = ("Install the data with `make data` (as root it runs `apt-get install dataset-fashion-mnist`), "
       f"or set {ENV_VAR} to a folder holding the four original IDX files (gzipped or not).")


class DataError(Exception):
    """A problem with the data files that the user can fix; the CLI prints it and exits 1."""


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_verified(path: Path, name: str) -> bytes:
    """Return the uncompressed bytes of `path`, or raise DataError naming both digests."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read {path}: {err}. Replace the file with the original. {FIX}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != SHA256[name]:
        raise DataError(
            f"{path} is not the original Fashion-MNIST file {name}: SHA-256 of its uncompressed "
            f"bytes is {actual}, expected {SHA256[name]}. Delete it and restore the original. {FIX}")
    return data


def _copy_in(folder: Path, label: str) -> tuple[str, dict[str, bytes]]:
    missing = [n for n in SHA256 if _find_file(folder, n) is None]
    if missing:
        raise DataError(f"{label} {folder} lacks {', '.join(missing)} (plain or .gz). {FIX}")
    files = {}
    for name in SHA256:
        files[name] = _read_verified(_find_file(folder, name), name)
        if folder.resolve() != RAW_DIR.resolve():
            write_atomic(RAW_DIR / name, files[name])
    # inside the project, say where relative to it: a result should not name the clone's path
    shown = folder.relative_to(PROJECT_ROOT) if folder.is_relative_to(PROJECT_ROOT) else folder
    return f"{label} {shown}", files


def ensure_data() -> str:
    """Make data/FashionMNIST/raw hold the four verified originals; return where they came from."""
    return verified_files()[0]


def verified_files() -> tuple[str, dict[str, bytes]]:
    """(where the data came from, file name -> its verified uncompressed bytes), after making
    data/FashionMNIST/raw hold the four originals."""
    if os.environ.get(ENV_VAR):
        folder = Path(os.environ[ENV_VAR]).expanduser()
        if not folder.is_dir():
            raise DataError(f"{ENV_VAR}={folder} is not a folder. Point it at the folder of the four "
                            "IDX files, or unset it to use the default lookup.")
        return _copy_in(folder, f"${ENV_VAR}")
    if all(_find_file(RAW_DIR, n) for n in SHA256):
        return _copy_in(RAW_DIR, "project data folder")
    if DEBIAN_DIR.is_dir():
        return _copy_in(DEBIAN_DIR, "Debian package dataset-fashion-mnist at")
    try:
        from torchvision.datasets import FashionMNIST
        FashionMNIST(root=str(DATA_ROOT), train=True, download=True)
    except Exception as err:  # no internet: urllib raises many kinds of errors
        raise DataError(f"Fashion-MNIST was not found (looked in ${ENV_VAR}, {RAW_DIR}, {DEBIAN_DIR}) "
                        f"and torchvision's download failed ({type(err).__name__}). {FIX}") from None
    return _copy_in(RAW_DIR, "torchvision download into")


def idx_array(raw: bytes) -> torch.Tensor:
    """The uint8 array an IDX file holds (what torchvision's MNIST readers return): a magic of two
    zero bytes, the type 0x08 (unsigned byte) and the number of dimensions, then each dimension as
    a big-endian int32, then the values."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"not an IDX file of unsigned bytes (it starts {raw[:4].hex()}). {FIX}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != 4 + 4 * ndim + math.prod(dims):
        raise DataError(f"an IDX file of shape {dims} should hold {4 + 4 * ndim + math.prod(dims)} bytes, "
                        f"not {len(raw)}. {FIX}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).view(*dims)


@dataclass
class Split:
    """Images as one uint8 tensor [N, 28, 28] and int64 labels [N], both on the device."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])


@dataclass
class FashionMNIST:
    train: Split   # 54,000 images: the only ones the model learns from
    val: Split     # 6,000 held out from the training set: chooses epochs and hyper-parameters
    test: Split    # the official 10,000: only ever reported
    mean: float    # pixel mean / std of the 54k training images, in [0, 1] units
    std: float
    source: str

    def subset(self, n_train: int, n_eval: int) -> "FashionMNIST":
        """A small slice of the real data for --quick smoke runs."""
        return FashionMNIST(self.train.head(n_train), self.val.head(n_eval), self.test.head(n_eval),
                            self.mean, self.std, self.source + f" (quick subset: {n_train} train)")


def stratified_split(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): `per_class` images of every class go to val, chosen by a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().flatten()
        val.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    val_idx = torch.cat(val).sort().values
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_idx] = True
    return (~is_val).nonzero().flatten(), val_idx


def load(device: str | torch.device = "cpu") -> FashionMNIST:
    """Verified Fashion-MNIST on `device`, split 54k / 6k / 10k."""
    source, files = verified_files()
    read = {name: idx_array(raw) for name, raw in files.items()}
    train_x, train_y = read["train-images-idx3-ubyte"], read["train-labels-idx1-ubyte"].long()
    train_idx, val_idx = stratified_split(train_y, VAL_PER_CLASS, SPLIT_SEED)
    # Pixel mean/std from exact integer sums: a float32 mean depends on the thread count in its
    # last bit, and every input (hence every loss) with it; a Ray task must match a serial run.
    pixels = train_x[train_idx].double()      # integer-valued: float64 sums are exact in any order
    count, total, squares = pixels.numel(), int(pixels.sum().item()), int(pixels.pow(2).sum().item())
    mean = total / count / 255
    std = math.sqrt((squares - total * total / count) / (count - 1)) / 255
    on = lambda x, y: Split(x.to(device), y.long().to(device))  # noqa: E731
    return FashionMNIST(
        train=on(train_x[train_idx], train_y[train_idx]),
        val=on(train_x[val_idx], train_y[val_idx]),
        test=on(read["t10k-images-idx3-ubyte"], read["t10k-labels-idx1-ubyte"].long()),
        mean=mean, std=std, source=source)


# ----------------------------------------------------------------------------------------------
# Batches: uint8 images -> normalised float inputs, with optional augmentation as tensor ops.

def random_resized_crop_boxes(n: int, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                              gen: torch.Generator, device) -> torch.Tensor:
    """Per-sample crop boxes (top, left, height, width) with torchvision's RandomResizedCrop
    semantics: up to 10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)), the first
    box that fits wins, else the centre crop clamped to `ratio` (the whole square image here)."""
    tries = 10
    area = torch.empty(n, tries, device=device).uniform_(*scale, generator=gen)
    log_r = torch.empty(n, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    return crop_boxes(area, log_r, torch.rand(n, 2, device=device, generator=gen), size)


def crop_boxes(area: torch.Tensor, log_r: torch.Tensor, position: torch.Tensor, size: int) -> torch.Tensor:
    """The boxes random_resized_crop_boxes makes from its draws: area fractions and log aspect
    ratios [n, tries], positions [n, 2] in [0, 1). Apart so a population can draw per member and
    compute the boxes of all members at once (stacked.train_inputs)."""
    area, aspect = size * size * area, log_r.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = fits.float().argmax(dim=1, keepdim=True)              # first try that fits
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.full_like(w[:, 0], size))
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.full_like(h[:, 0], size))
    top = torch.where(any_fit, (position[:, 0] * (size - h + 1)).floor(), (size - h) // 2)
    left = torch.where(any_fit, (position[:, 1] * (size - w + 1)).floor(), (size - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def crop_resize_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Resample every box of x [N, 1, S, S] to S x S exactly as torchvision's crop-then-bilinear-resize
    does (sample positions clamped to the box), mirroring the rows where `flip` is true; one grid_sample."""
    n, _, size, _ = x.shape
    top, left, h, w = (b[:, None] for b in boxes.unbind(1))
    k = torch.arange(size, device=x.device, dtype=x.dtype)[None, :] + 0.5
    cols = (left + w * k / size - 0.5).clamp(min=left, max=left + w - 1)      # pixel coordinates
    rows = (top + h * k / size - 0.5).clamp(min=top, max=top + h - 1)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    to_unit = lambda p: (2 * p + 1) / size - 1                                 # noqa: E731 (align_corners=False)
    grid = torch.stack([to_unit(cols)[:, None, :].expand(n, size, size),
                        to_unit(rows)[:, :, None].expand(n, size, size)], dim=-1)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Every image of x [N, C, S, S] moved by whole pixels, exactly as the `shift` augmentation moves
    it (a box offset by dy rows and dx columns); used for test-time augmentation."""
    n, size = len(x), x.shape[-1]
    boxes = torch.tensor([float(dy), float(dx), size, size], device=x.device).repeat(n, 1)
    return crop_resize_flip(x, boxes, torch.zeros(n, dtype=torch.bool, device=x.device))


def make_inputs(images: torch.Tensor, mean: float, std: float, augment: str = "none",
                crop_scale: tuple[float, float] = (0.08, 1.0), gen: torch.Generator | None = None,
                max_shift: int = 2) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float [N, 1, 28, 28]; augment is none | crop | flip | crop+flip |
    shift | shift+flip, where shift moves each image by up to `max_shift` whole pixels each way
    (the border, black in Fashion-MNIST, fills in)."""
    x = images.unsqueeze(1).float().div_(255)
    if augment != "none":
        n, size = len(x), x.shape[-1]
        if "crop" in augment:
            boxes = random_resized_crop_boxes(n, size, crop_scale, (3 / 4, 4 / 3), gen, x.device)
        else:
            boxes = torch.tensor([0.0, 0.0, size, size], device=x.device).repeat(n, 1)
            if "shift" in augment:
                boxes[:, :2] = torch.randint(-max_shift, max_shift + 1, (n, 2), device=x.device, generator=gen).float()
        flip = (torch.rand(n, device=x.device, generator=gen) < 0.5) if "flip" in augment \
            else torch.zeros(n, dtype=torch.bool, device=x.device)
        x = crop_resize_flip(x, boxes, flip)
    return x.sub_(mean).div_(std)
