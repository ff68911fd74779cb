"""The penalty terms against values and gradients computed by hand."""
import torch

from experiments import penalties
from experiments.models import MLP


def test_l1_l2_values_and_gradients():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]], requires_grad=True)
    v = torch.tensor([[[-3.0]]], requires_grad=True)
    l1 = penalties.l1_penalty([w, v])
    assert l1.item() == 1 + 2 + 0.5 + 0 + 3
    l1.backward()
    assert w.grad.tolist() == [[1.0, -1.0], [1.0, 0.0]] and v.grad.item() == -1.0
    w.grad = v.grad = None
    l2 = penalties.l2_penalty([w, v])
    assert l2.item() == 0.5 * (1 + 4 + 0.25 + 0 + 9)
    l2.backward()
    assert w.grad.tolist() == [[1.0, -2.0], [0.5, 0.0]] and v.grad.item() == -3.0


def test_only_weights_are_penalised():
    model = MLP(depth=2, width=8, batchnorm=True)
    shapes = [tuple(p.shape) for p in penalties.penalised(model.parameters())]
    assert shapes == [(8, 784), (8, 8), (10, 8)]


def test_soft_threshold_zeros_small_weights_and_shrinks_large():
    w = torch.tensor([0.3, -0.05, 0.1, -1.0])
    penalties.soft_threshold_([w], 0.1)
    assert torch.allclose(w, torch.tensor([0.2, 0.0, 0.0, -0.9]))
    assert (w == 0).sum() == 2
