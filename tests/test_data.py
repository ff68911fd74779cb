"""Data lookup order, digest checks, the split, and the batch augmentation."""
import gzip
import shutil

import pytest
import torch

from experiments import data

REAL_RAW = data.RAW_DIR   # the verified copy `make data` made, captured before any monkeypatch


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point the lookup at empty temporary folders; tests then add what they need."""
    raw = tmp_path / "project" / "FashionMNIST" / "raw"
    debian = tmp_path / "debian"
    monkeypatch.setattr(data, "RAW_DIR", raw)
    monkeypatch.setattr(data, "DATA_ROOT", tmp_path / "project")
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    return raw, debian


def fill(folder, gz=False, corrupt=None):
    """Copy the verified originals into `folder` (gzipped or not), optionally flipping one byte."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in data.SHA256:
        blob = bytearray((REAL_RAW / name).read_bytes())
        if name == corrupt:
            blob[-1] ^= 0xFF
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(bytes(blob), compresslevel=1))
        else:
            (folder / name).write_bytes(bytes(blob))




def test_env_folder_wins_and_is_reported(isolated, tmp_path, monkeypatch):
    raw, debian = isolated
    fill(debian)
    fill(tmp_path / "mine", gz=True)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "mine"))
    assert data.ensure_data().startswith(f"${data.ENV_VAR}")
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.SHA256)


def test_project_folder_before_debian(isolated, monkeypatch):
    raw, debian = isolated
    fill(raw)
    fill(debian, corrupt="t10k-labels-idx1-ubyte")   # would fail if it were read
    # named relative to the project, so a result file does not record where the clone lives
    monkeypatch.setattr(data, "PROJECT_ROOT", raw.parents[2])
    assert data.ensure_data() == "project data folder project/FashionMNIST/raw"


@pytest.mark.slow
def test_debian_folder_used_when_project_folder_empty(isolated):
    raw, debian = isolated
    fill(debian, gz=True)
    assert data.ensure_data().startswith("Debian package")
    assert (raw / "train-labels-idx1-ubyte").read_bytes() == (REAL_RAW / "train-labels-idx1-ubyte").read_bytes()


def test_nothing_found_offline_says_how_to_fix(isolated, monkeypatch):
    import torchvision.datasets
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.ensure_data()


def test_env_folder_missing_file_is_named_and_no_fallback(isolated, tmp_path, monkeypatch):
    raw, debian = isolated
    fill(debian)
    mine = tmp_path / "mine"
    fill(mine)
    (mine / "t10k-images-idx3-ubyte").unlink()
    monkeypatch.setenv(data.ENV_VAR, str(mine))
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte"):
        data.ensure_data()
    assert not raw.exists()


def test_idx_reader_matches_torchvision_and_refuses_bad_bytes():
    """The engine parses the verified bytes itself (no torchvision import, seconds a process):
    exactly the arrays torchvision's readers give, and a clear error for bytes that are no IDX file."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    for name in data.SHA256:
        ours = data.idx_array((REAL_RAW / name).read_bytes())
        theirs = (read_image_file if "images" in name else read_label_file)(str(REAL_RAW / name))
        assert ours.dtype == torch.uint8 and ours.shape == theirs.shape
        assert torch.equal(ours.long() if "labels" in name else ours, theirs)
    labels = (REAL_RAW / "t10k-labels-idx1-ubyte").read_bytes()
    with pytest.raises(data.DataError, match="not an IDX file of unsigned bytes"):
        data.idx_array(b"PK\x03\x04" + labels[4:])
    with pytest.raises(data.DataError, match=r"shape \[10000\] should hold 10008 bytes, not 9998"):
        data.idx_array(labels[:-10])


def test_split_sizes_disjoint_and_stratified(fmnist):
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (54000, 6000, 10000)
    assert torch.bincount(fmnist.val.labels).tolist() == [600] * 10
    assert torch.bincount(fmnist.train.labels).tolist() == [5400] * 10
    labels = torch.arange(60000) % 10
    a_train, a_val = data.stratified_split(labels, 600, 0)
    b_train, b_val = data.stratified_split(labels, 600, 0)
    assert torch.equal(a_val, b_val) and len(set(a_val.tolist()) & set(a_train.tolist())) == 0
    assert not torch.equal(a_val, data.stratified_split(labels, 600, 1)[1])


def test_normalisation_statistics(fmnist):
    assert 0.28 < fmnist.mean < 0.29 and 0.35 < fmnist.std < 0.36   # Fashion-MNIST's known values
    x = data.make_inputs(fmnist.train.images[:5000], fmnist.mean, fmnist.std)
    assert x.shape == (5000, 1, 28, 28) and abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_crop_boxes_follow_torchvision_semantics():
    gen = torch.Generator().manual_seed(0)
    boxes = data.random_resized_crop_boxes(20000, 28, (0.08, 1.0), (3 / 4, 4 / 3), gen, "cpu")
    top, left, h, w = boxes.unbind(1)
    assert ((h >= 1) & (w >= 1) & (top + h <= 28) & (left + w <= 28) & (top >= 0) & (left >= 0)).all()
    area = h * w / 784
    assert area.min() >= 0.05 and area.max() <= 1.0
    assert ((w / h) > 0.55).all() and ((w / h) < 1.8).all()
    # torchvision's own sampler over the same box space has the same mean area (within noise)
    from torchvision.transforms import RandomResizedCrop
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(1, 28, 28), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(20000)], dtype=torch.float)
    assert abs((ref[:, 2] * ref[:, 3] / 784).mean() - area.mean()) < 0.01


def test_augmentation_is_random_per_sample_and_flip_is_exact(fmnist):
    images = fmnist.train.images[:1].expand(64, 28, 28)          # the same image 64 times
    gen = torch.Generator().manual_seed(1)
    x = data.make_inputs(images, 0.0, 1.0, "crop+flip", (0.08, 1.0), gen)
    assert x.shape == (64, 1, 28, 28)
    assert len({tuple(v.flatten()[::50].tolist()) for v in x}) > 50   # different crops per sample
    flipped = data.make_inputs(images, 0.0, 1.0, "flip", gen=torch.Generator().manual_seed(2))
    plain = data.make_inputs(images, 0.0, 1.0)
    is_mirror = [torch.allclose(f, p.flip(-1), atol=1e-6) for f, p in zip(flipped, plain)]
    is_same = [torch.allclose(f, p, atol=1e-6) for f, p in zip(flipped, plain)]
    assert all(m or s for m, s in zip(is_mirror, is_same)) and 10 < sum(is_mirror) < 54


def test_full_box_crop_is_identity(fmnist):
    x = fmnist.train.images[:8].unsqueeze(1).float()
    boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(8, 4)
    out = data.crop_resize_flip(x, boxes, torch.zeros(8, dtype=torch.bool))
    assert torch.allclose(out, x, atol=1e-2)   # pixel units 0..255


def test_crop_matches_torchvision_resized_crop(fmnist):
    from torchvision.transforms.functional import resized_crop
    img = fmnist.train.images[3].unsqueeze(0).float()
    ours = data.crop_resize_flip(img.unsqueeze(0), torch.tensor([[4.0, 6.0, 14.0, 12.0]]), torch.tensor([False]))
    ref = resized_crop(img, 4, 6, 14, 12, [28, 28], antialias=False)
    assert (ours[0] - ref).abs().max() < 1e-3    # pixel units 0..255: the same bilinear resampling
    mirrored = data.crop_resize_flip(img.unsqueeze(0), torch.tensor([[4.0, 6.0, 14.0, 12.0]]), torch.tensor([True]))
    assert (mirrored[0] - ref.flip(-1)).abs().max() < 1e-3


def test_shift_moves_whole_pixels_like_the_training_augmentation(fmnist):
    x = fmnist.train.images[:4].unsqueeze(1).float()
    assert torch.allclose(data.shift(x, 0, 0), x, atol=1e-2)
    down = data.shift(x, -1, 0)          # a box one row above the image: the garment moves down a row
    assert torch.allclose(down[..., 1:, :], x[..., :-1, :], atol=1e-2)
    right = data.shift(x, 0, -1)
    assert torch.allclose(right[..., :, 1:], x[..., :, :-1], atol=1e-2)
    # the same whole-pixel box the `shift` augmentation draws at random gives the same image
    gen = torch.Generator().manual_seed(0)
    one = fmnist.train.images[:1].expand(200, 28, 28)
    augmented = data.make_inputs(one, 0.0, 1.0, "shift", gen=gen, max_shift=1) * 255
    views = [data.shift(x[:1], dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert all(any(torch.allclose(a, v[0], atol=1e-2) for v in views) for a in augmented)
