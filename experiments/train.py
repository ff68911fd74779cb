"""The one training loop: fit(data, spec, seed) -> {"history": [...], "final": {...}}.

Every experiment runs through here; regularisers are loss terms and parameter groups, early
stopping is a few lines at the end of the epoch.  Speed comes from the data living on the device
(batches are index slices of one uint8 tensor) and from reading metrics back once per epoch.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn
from tqdm import tqdm

from . import models, penalties
from .catalog import RunSpec
from .data import FashionMNIST, Split, make_inputs, shift

EVAL_BATCH = 2048   # images per forward pass when evaluating (no gradients, so larger is fine)
SINGLE_VIEW = ((0, 0),)
# Test-time augmentation: the image and its 1-pixel shifts (rows, columns) up, down, left and right.
SHIFTED_VIEWS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))

# Denormal floats (e.g. Adam's moments of units that a weight penalty switched off) make CPU
# arithmetic 10-20x slower: an L2 run slowed from 0.65 to ~5 s per epoch. Flushing them is a
# per-thread mode that torch's worker threads copy from the thread that starts them, so it is set
# here, at import, before the first parallel operation.
torch.set_flush_denormal(True)


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed torch's global RNG (weights, dropout) and return the generator for batches and crops."""
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def make_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    """Decoupled weight decay only on weights (dim >= 2), as nanoGPT does; biases/norms exempt."""
    decay = penalties.penalised(model.parameters())
    decay_ids = {id(p) for p in decay}
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": [p for p in model.parameters() if id(p) not in decay_ids], "weight_decay": 0.0}]
    if spec.optimizer == "sgd":
        # torch's SGD couples weight_decay to the gradient; for plain SGD that equals decoupled decay
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=True, fused=True)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, fused=True)
    # plain Adam: its weight_decay would be an L2 gradient term, so decoupled decay needs AdamW
    if spec.weight_decay:
        raise ValueError("weight_decay with optimizer=adam is ambiguous: use adamw, or l2 for a loss term")
    return torch.optim.Adam(groups, lr=spec.lr, fused=True)   # fused: one kernel for all parameters


def autocast(spec: RunSpec, device: torch.device) -> bool:
    """Whether to run the forward pass under bf16 autocast (weights, optimizer and loss stay fp32)."""
    return spec.precision == "bf16" or (spec.precision == "auto" and device.type == "cuda")


def inputs(images: torch.Tensor, data: FashionMNIST, spec: RunSpec | None = None,
           gen: torch.Generator | None = None) -> torch.Tensor:
    """A batch as the model takes it: uint8 images are normalised (and augmented when training);
    float rows are already features (a frozen backbone's output) and are used as they are."""
    if images.is_floating_point():
        return images
    if spec is None:
        x = make_inputs(images, data.mean, data.std)
    else:
        x = make_inputs(images, data.mean, data.std, spec.augment, spec.crop_scale, gen, spec.max_shift)
    # convolutions run fastest on this layout (oneDNN on CPU, cuDNN on GPU); for an MLP it changes nothing
    return x.contiguous(memory_format=torch.channels_last)


def lr_at(step: int, total_steps: int, spec: RunSpec) -> float:
    if spec.schedule == "cosine":
        return spec.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return spec.lr


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, data: FashionMNIST, amp: bool,
             views: tuple = SINGLE_VIEW) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predictions) on a whole split, in eval mode. With several `views` (pixel
    offsets) the prediction is the mean of their softmax outputs, and the loss is that mean's."""
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    preds = []
    for start in range(0, len(split), EVAL_BATCH):
        x = inputs(split.images[start:start + EVAL_BATCH], data)
        y = split.labels[start:start + EVAL_BATCH]
        log_mean = mean_over_views(model, x, views, amp)
        loss_sum += nn.functional.nll_loss(log_mean, y, reduction="sum")
        preds.append(log_mean.argmax(1))
    preds = torch.cat(preds)
    return loss_sum.item() / len(split), (preds == split.labels).float().mean().item(), preds


def mean_over_views(forward, x: torch.Tensor, views: tuple, amp: bool) -> torch.Tensor:
    """Log of the mean softmax output of `forward` over the test-time `views` (pixel offsets) of
    the batch x, [..., classes]; for a single view exactly log_softmax. (StackedRun._evaluate
    averages a population's views with it too.)"""
    log_probs = []
    for dy, dx in views:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            logits = forward(shift(x, dy, dx) if (dy, dx) != (0, 0) else x)
        log_probs.append(logits.float().log_softmax(-1))
    return torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(views))


def weight_stats(model: nn.Module, zero_threshold: float = 1e-3) -> dict:
    """Per weight matrix: size, L1 and L2 norms, how many weights are (near) zero; for the first
    layer also a histogram and the L1 mass of the weights leaving each input pixel."""
    stats, first = [], None
    for name, w in model.named_parameters():
        if w.dim() >= 2:
            a = w.detach().abs().float()
            stats.append({"name": name, "size": w.numel(), "l1": a.sum().item(), "l2": a.pow(2).sum().sqrt().item(),
                          "frac_near_zero": (a < zero_threshold).float().mean().item(),
                          "frac_exact_zero": (a == 0).float().mean().item()})
            if first is None and w.dim() == 2 and w.shape[1] == 28 * 28:
                edges = torch.linspace(-0.2, 0.2, 81)
                values = w.detach().float().cpu().flatten().clamp(-0.2, 0.2)
                first = {"edges": [round(e, 4) for e in edges.tolist()],
                         "counts": torch.histogram(values, edges).hist.long().tolist(),
                         "pixel_l1": [round(v, 5) for v in a.sum(0).cpu().tolist()]}
    out = {"zero_threshold": zero_threshold, "layers": stats}
    if first:
        out["first_layer"] = first
    return out


def fit(data: FashionMNIST, spec: RunSpec, seed: int, device: torch.device,
        max_batches: int | None = None, desc: str = "") -> dict:
    """Train one model; return its per-epoch history and final metrics (best weights restored
    when early stopping is on). A NaN/inf loss ends the run marked `diverged`, not a crash."""
    gen = seed_everything(seed, device)
    model = build_model(spec, in_features=data.train.images[0].numel()).to(device)
    model = model.to(memory_format=torch.channels_last)       # matches inputs(); a no-op for an MLP
    optimizer = make_optimizer(model, spec)
    weights = penalties.penalised(model.parameters())
    amp = autocast(spec, device)
    n = len(data.train)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    if max_batches:
        steps_per_epoch = min(steps_per_epoch, max_batches)
    total_steps = spec.epochs * steps_per_epoch
    history, best, best_state, bad_epochs, diverged, step = [], math.inf, None, 0, False, 0
    started = time.perf_counter()

    # disable=None: a progress bar on a terminal, nothing in a log file or a CI transcript
    for epoch in tqdm(range(1, spec.epochs + 1), desc=desc, leave=False, unit="epoch", disable=None):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)    # accumulated on the device: no sync per step
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for b in range(steps_per_epoch):
            idx = order[b * spec.batch_size:(b + 1) * spec.batch_size]
            x = inputs(data.train.images[idx], data, spec, gen)
            y = data.train.labels[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, spec)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=spec.label_smoothing)
            objective = loss
            if spec.l1 and not spec.l1_proximal:
                objective = objective + spec.l1 * penalties.l1_penalty(weights)
            if spec.l2:
                objective = objective + spec.l2 * penalties.l2_penalty(weights)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if spec.l1 and spec.l1_proximal:
                penalties.soft_threshold_(weights, optimizer.param_groups[0]["lr"] * spec.l1)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            step += 1

        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
        val_loss, val_acc, _ = evaluate(model, data.val, data, amp)
        test_loss, test_acc, _ = evaluate(model, data.test, data, amp)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
                        "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_start})
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            diverged = True
            break
        # Early stopping on validation loss only (the test set never chooses anything).
        if val_loss < best:
            best, bad_epochs = val_loss, 0
            if spec.patience:
                best_state = copy.deepcopy(model.state_dict())
        elif spec.patience:
            bad_epochs += 1
            if bad_epochs >= spec.patience:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    if diverged:
        return run_record(model, data, history, seconds, None)
    views = SHIFTED_VIEWS if spec.test_time_shifts else SINGLE_VIEW
    # clean: no dropout, no crops
    evaluated = {split: evaluate(model, getattr(data, split), data, amp, views) for split in ("train", "val", "test")}
    return run_record(model, data, history, seconds, evaluated)


def build_model(spec: RunSpec, in_features: int) -> nn.Module:
    """The network of `spec`: models' MLP or CNN, or transfer's backbone with its head (transfer
    imports torchvision, seconds here, so only a transfer run imports it)."""
    if spec.model == "transfer":
        from . import transfer
        return transfer.build(spec, in_features)
    return models.build(spec, in_features)


def run_record(model: nn.Module, data: FashionMNIST, history: list[dict], seconds: float,
               evaluated: dict | None) -> dict:
    """What a finished run reports, from fit or from a population (stacked.StackedRun):
    `evaluated` maps each split to (loss, accuracy, predictions) of the final weights, now in
    `model`; None marks a diverged run. Final metrics, the best epoch, the test confusion matrix,
    the first 24 misclassified test images and weight statistics."""
    if evaluated is None:
        final = {"diverged": True, "diverged_epoch": len(history), "epochs": len(history), "seconds": seconds,
                 **{f"{s}_{m}": None for s in ("train", "val", "test") for m in ("loss", "acc")}}
        return {"history": _finite(history), "final": final}
    (train_loss, train_acc, _), (val_loss, val_acc, _), (test_loss, test_acc, test_pred) = \
        evaluated["train"], evaluated["val"], evaluated["test"]
    labels = data.test.labels
    confusion = torch.zeros(10, 10, dtype=torch.long, device=labels.device)
    confusion.index_put_((labels, test_pred), torch.ones_like(test_pred), accumulate=True)
    final = {"train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
             "train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
             "epochs": len(history), "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
             "seconds": seconds, "diverged": False, "confusion": confusion.tolist(), "weights": weight_stats(model),
             "misclassified": [{"index": i, "true": labels[i].item(), "pred": test_pred[i].item()}
                               for i in (test_pred != labels).nonzero().flatten()[:24].tolist()]}
    return {"history": history, "final": final}


def _finite(history: list[dict]) -> list[dict]:
    """JSON has no NaN/inf: store them as null."""
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in h.items()} for h in history]
