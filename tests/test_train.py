"""The training loop on small slices of the real data: early stopping, determinism, divergence."""
import pytest
import torch

from experiments.catalog import RunSpec
from experiments.train import fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(fmnist):
    return fmnist.subset(512, 1000)


def test_history_and_final_shape(tiny):
    run = fit(tiny, RunSpec(epochs=2, width=32, batch_size=32), seed=0, device=CPU)
    assert [h["epoch"] for h in run["history"]] == [1, 2]
    assert set(run["history"][0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                                      "lr", "seconds"}
    final = run["final"]
    assert 0.3 < final["test_acc"] <= 1 and final["diverged"] is False
    assert sum(map(sum, final["confusion"])) == 1000


@pytest.mark.slow
def test_early_stopping_restores_best_weights(tiny):
    # 512 images, a wide net and a high lr overfit fast: the val loss rises and training stops
    spec = RunSpec(epochs=40, width=512, lr=3e-3, schedule="constant", patience=2, batch_size=64)
    run = fit(tiny, spec, seed=0, device=CPU)
    hist, final = run["history"], run["final"]
    best = min(hist, key=lambda h: h["val_loss"])
    assert final["epochs"] < 40 and final["epochs"] == best["epoch"] + 2
    assert final["best_epoch"] == best["epoch"]
    assert final["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)   # restored, not the last
    assert hist[-1]["val_loss"] > best["val_loss"]


@pytest.mark.slow
def test_cpu_rerun_is_bit_identical(tiny):
    spec = RunSpec(epochs=2, width=64, dropout=0.2, augment="crop+flip")
    a, b = (fit(tiny, spec, seed=3, device=CPU) for _ in range(2))
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert strip(a["history"]) != strip(fit(tiny, spec, seed=4, device=CPU)["history"])


def test_divergence_is_marked_not_raised(tiny):
    run = fit(tiny, RunSpec(epochs=3, optimizer="sgd", lr=1e6, schedule="constant"), seed=0, device=CPU)
    assert run["final"]["diverged"] is True and run["final"]["test_acc"] is None
    assert run["final"]["diverged_epoch"] == 1


@pytest.mark.slow
def test_penalties_shrink_weights(tiny):
    # Adam moves each weight ~lr per step, so the proximal threshold lr * l1 needs l1 of order 1
    base = fit(tiny, RunSpec(epochs=2, width=64), 0, CPU)["final"]["weights"]["layers"]
    l1 = fit(tiny, RunSpec(epochs=2, width=64, l1=2.0, l1_proximal=True), 0, CPU)["final"]["weights"]["layers"]
    l2 = fit(tiny, RunSpec(epochs=2, width=64, l2=1e-2), 0, CPU)["final"]["weights"]["layers"]
    assert l1[0]["frac_exact_zero"] > 0.05 and base[0]["frac_exact_zero"] == 0
    assert l2[0]["l2"] < base[0]["l2"]


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="unknown RunSpec field"):
        RunSpec().with_overrides(dropuot=0.5)
    with pytest.raises(ValueError, match="optimizer"):
        RunSpec(optimizer="lbfgs")


@pytest.mark.slow
def test_test_time_shifts_average_the_softmax_of_five_views(tiny):
    from experiments.data import shift
    from experiments.train import SHIFTED_VIEWS, evaluate, inputs
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    loss, acc, preds = evaluate(model, tiny.test, tiny, amp=False, views=SHIFTED_VIEWS)
    x = inputs(tiny.test.images, tiny)
    probs = torch.stack([model(shift(x, dy, dx)).softmax(1) for dy, dx in SHIFTED_VIEWS]).mean(0)
    assert torch.equal(preds, probs.argmax(1))
    assert loss == pytest.approx(torch.nn.functional.nll_loss(probs.log(), tiny.test.labels).item(), rel=1e-4)
    single = evaluate(model, tiny.test, tiny, amp=False)
    assert not torch.equal(single[2], preds)      # the views change some predictions
    # fit() reports the final numbers with the views when the spec asks for them
    run = fit(tiny, RunSpec(epochs=1, width=32, test_time_shifts=True), 0, CPU)
    assert run["final"]["test_loss"] != pytest.approx(run["history"][-1]["test_loss"], rel=1e-4)


def test_test_time_shifts_need_images():
    with pytest.raises(ValueError, match="test_time_shifts needs images"):
        RunSpec(model="transfer", test_time_shifts=True)
