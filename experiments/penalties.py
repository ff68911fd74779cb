"""The L1 and L2 weight-penalty terms (the report quotes these functions by name).

Both act only on weight matrices and kernels (tensors with dim >= 2): penalising biases or
normalisation scales constrains offsets rather than model complexity.
"""
import torch


def penalised(params):
    """The parameters that weight penalties and weight decay apply to."""
    return [p for p in params if p.dim() >= 2]


def l1_penalty(weights):
    """sum_i |w_i|. Its gradient lambda * sign(w) pulls every weight toward 0 at a
    constant rate."""
    return sum(w.abs().sum() for w in weights)


def l2_penalty(weights):
    """(1/2) sum_i w_i^2. Its gradient lambda * w shrinks every weight in proportion to
    its size."""
    return 0.5 * sum(w.pow(2).sum() for w in weights)


@torch.no_grad()
def soft_threshold_(weights, threshold: float):
    """Proximal step of L1: w <- sign(w) * max(|w| - threshold, 0). Sets small weights
    exactly to 0, which a plain (sub)gradient step on l1_penalty never does."""
    for w in weights:
        w.copy_(w.sign() * (w.abs() - threshold).clamp_min(0))
