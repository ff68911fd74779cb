"""Transfer learning without the real ImageNet weights: a randomly initialised ResNet-18 state dict
stands in, and the published-digest table is pointed at it (nothing else is faked)."""
import os

import pytest
import torch
import torchvision

from conftest import run_cli
from experiments import results, runner, transfer
from experiments.__main__ import main
from experiments.catalog import RunSpec

SPEC = RunSpec(model="transfer", backbone="resnet18", image_size=32)


def random_weights(path, seed):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return transfer.sha256(path)


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A random resnet18 file, published (in the patched table) under its own digest prefix."""
    path = tmp_path / "resnet18-random.pth"
    digest = random_weights(path, 0)
    monkeypatch.setitem(transfer.URLS, "resnet18", f"https://127.0.0.1:9/resnet18-{digest[:8]}.pth")
    monkeypatch.setattr(transfer, "_verified", {})
    monkeypatch.setattr(transfer, "FEATURES_DIR", tmp_path / "features")
    return path


def test_published_names_are_torchvisions():
    assert transfer.published("resnet101")[::2] == ("resnet101-63fe2227.pth", "63fe2227")


def test_matching_digest_is_accepted_and_a_wrong_one_refused(weights, monkeypatch):
    assert transfer.weights_file("resnet18", weights) == (weights, transfer.sha256(weights))
    monkeypatch.setattr(transfer, "_verified", {})
    monkeypatch.setitem(transfer.URLS, "resnet18", "https://127.0.0.1:9/resnet18-00000000.pth")
    with pytest.raises(transfer.Unavailable, match=f"starts with {transfer.sha256(weights)[:8]}, expected 00000000"):
        transfer.weights_file("resnet18", weights)


@pytest.mark.slow
def test_feature_cache_hits_and_invalidates(weights, tmp_path, monkeypatch):
    transfer.weights_file("resnet18", weights)
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    first = transfer.features(SPEC, images, torch.device("cpu"))
    [cached] = (tmp_path / "features").iterdir()
    mtime = cached.stat().st_mtime_ns
    assert first.shape == (8, 512) and first.dtype == torch.float32

    def no_backbone(spec):
        raise AssertionError("a cache hit must not run the backbone")
    with monkeypatch.context() as m:
        m.setattr(transfer, "backbone", no_backbone)
        assert torch.equal(transfer.features(SPEC, images, torch.device("cpu")), first)
    assert cached.stat().st_mtime_ns == mtime

    transfer.features(RunSpec(**{**SPEC.as_dict(), "image_size": 40}), images, torch.device("cpu"))
    transfer.features(SPEC, images[:4], torch.device("cpu"))        # other images (e.g. the quick subset)
    other = tmp_path / "other.pth"                                    # other weights
    monkeypatch.setitem(transfer.URLS, "resnet18", f"https://127.0.0.1:9/resnet18-{random_weights(other, 1)[:8]}.pth")
    monkeypatch.setattr(transfer, "_verified", {})
    transfer.weights_file("resnet18", other)
    assert not torch.equal(transfer.features(SPEC, images, torch.device("cpu")), first)
    assert len(list((tmp_path / "features").iterdir())) == 4


def test_fine_tuning_trains_only_layer4_and_the_head(weights):
    transfer.weights_file("resnet18", weights)
    model = transfer.build(RunSpec(**{**SPEC.as_dict(), "train_backbone": "layer4"}), 784).train()
    trainable = {n.split(".")[1] if n.startswith("backbone") else n.split(".")[0]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "head"}
    assert not model.backbone.bn1.training and model.backbone.layer4.training
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_missing_weights_exit_1_naming_the_file_and_writing_nothing(tmp_path):
    home = tmp_path / "torch"
    env = {**os.environ, "TORCH_HOME": str(home), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}                     # the download fails at once, online too
    progress = set(runner.PROGRESS_DIR.glob("transfer*"))
    out = tmp_path / "transfer.json"
    proc = run_cli("run", "transfer", "--quick", "--out", str(out), env=env, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "resnet101-63fe2227.pth" in proc.stderr and str(home / "hub" / "checkpoints") in proc.stderr
    assert "torchvision.models.resnet101(weights='IMAGENET1K_V1')" in proc.stderr
    assert not out.exists() and set(runner.PROGRESS_DIR.glob("transfer*")) == progress
    assert not any(home.rglob("*.pth"))
    skip = run_cli("run", "transfer", "--quick", "--out", str(out), "--skip-unavailable", env=env, timeout=60)
    assert skip.returncode == 0 and "skipped transfer" in skip.stdout and not out.exists()


@pytest.mark.slow
def test_full_run_on_cpu_needs_device_cpu_said_explicitly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("run", "transfer", "--out", str(tmp_path / "t.json"), timeout=60)
    assert proc.returncode == 1 and "--device cpu" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_run_of_both_variants_writes_a_valid_result(weights, tmp_path):
    out = tmp_path / "transfer.json"
    argv = ["run", "transfer", "--quick", "--seeds", "1", "--epochs", "1", "--set", "backbone=resnet18",
            "--set", "image_size=32", "--weights", str(weights), "--out", str(out)]
    assert main(argv) == 0
    result = results.load(out)
    assert [v["name"] for v in result["variants"]] == ["frozen backbone", "fine-tune layer4"]
    for v in result["variants"]:
        assert v["params"]["backbone"] == "resnet18" and v["params"]["image_size"] == 32
        assert v["summary"]["test_acc"]["n"] == 1 and v["summary"]["test_acc"]["mean"] > 0.1
    assert len(list((tmp_path / "features").iterdir())) == 3           # train, val, test
