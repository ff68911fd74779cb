"""Population training (experiments/population.py) against serial train.fit on slices of the real data.

The loop backend runs train.fit itself, so it is exact. The batched backend runs other kernels
(batched matrix multiplies, batch norm over a [B, k*C] view, a hand-written Adam/SGD with per-member
learning rates), so it is held to a tolerance, in fp32: first-step gradients within 1e-5 relative,
per-epoch training losses within 1e-3 relative after two epochs, final accuracies within 1 point
(the 1,000-image evaluation slices' binomial standard error is ~1.4 points).
"""
import json
import math
import shutil
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from experiments import models, penalties, planning, population, results, runner, stacked
from experiments.catalog import EXPERIMENTS, RunSpec
from experiments.population import Member, StackedRun, fit_population
from experiments.train import fit, inputs, seed_everything

CPU = torch.device("cpu")
ROOT = results.PROJECT_ROOT


@pytest.fixture(scope="module")
def tiny(fmnist):
    return fmnist.subset(1024, 1000)


def on_cuda(data):
    """The data set with every split's tensors on the CUDA device, as data.load("cuda") puts them."""
    cuda = torch.device("cuda")
    return type(data)(*(type(s)(s.images.to(cuda), s.labels.to(cuda)) for s in (data.train, data.val, data.test)),
                      data.mean, data.std, data.source)


def without_times(run: dict) -> dict:
    """A run with its wall-clock fields removed: everything else must match."""
    return {"history": [{k: v for k, v in h.items() if k != "seconds"} for h in run["history"]],
            "final": {k: v for k, v in run["final"].items() if k != "seconds"}}


@pytest.mark.slow
def test_population_of_one_on_the_loop_backend_is_fit_bit_for_bit(tiny):
    spec = RunSpec(epochs=2, width=64, dropout=0.2, augment="crop+flip")
    [pop] = fit_population(tiny, [Member("a", spec, 3)], CPU, backend="loop")
    assert without_times(pop) == without_times(fit(tiny, spec, 3, CPU))


def test_cpu_defaults_to_the_exact_loop_backend_and_cuda_to_batched():
    assert population.resolve_backend("auto", CPU) == "loop"
    assert population.resolve_backend("auto", torch.device("cuda")) == "batched"
    with pytest.raises(ValueError, match="not one of"):
        population.resolve_backend("vmap", CPU)


@pytest.mark.parametrize("kinds", [
    [dict(augment="none"), dict(augment="flip"), dict(augment="crop+flip", crop_scale=(0.08, 1.0)),
     dict(augment="crop", crop_scale=(0.6, 1.0)), dict(augment="shift", max_shift=2),
     dict(augment="shift+flip", max_shift=1), dict(augment="crop+flip", crop_scale=(0.6, 1.0))],
    [dict(augment="shift", max_shift=1)] * 3,
    [dict(augment="none"), *[dict(augment="crop+flip")] * 2, *[dict(augment="flip")] * 2, dict(augment="none")]],
    ids=["mixed", "one group", "consecutive groups"])
def test_population_inputs_are_each_members_make_inputs_bit_for_bit(tiny, kinds):
    """train_inputs resamples every augmented member in one call per group; each member's inputs
    must still be exactly what train.inputs gives it alone, with the same generator draws."""
    specs = [RunSpec(**kind) for kind in kinds]
    idx = torch.stack([torch.randperm(len(tiny.train), generator=torch.Generator().manual_seed(r))[:64]
                       for r in range(len(specs))])
    gens = [torch.Generator().manual_seed(10 + r) for r in range(len(specs))]
    alone = [torch.Generator().manual_seed(10 + r) for r in range(len(specs))]
    for _ in range(2):   # the second batch checks that each generator advanced as it does alone
        together = stacked.train_inputs(tiny, idx, specs, gens)
        for r, spec in enumerate(specs):
            own = inputs(tiny.train.images[idx[r]], tiny, spec, alone[r]).reshape(len(idx[r]), -1)
            assert torch.equal(together[r], own), kinds[r]


def test_augmented_rows_are_a_slice_where_consecutive_and_an_index_tensor_made_once_otherwise():
    assert stacked._rows((2, 3, 4), CPU) == slice(2, 5)
    assert torch.equal(stacked._rows((1, 4), CPU), torch.tensor([1, 4]))
    assert stacked._rows((1, 4), CPU) is stacked._rows((1, 4), CPU)   # no host-to-device copy per step
    kept = stacked._rows((0, 2), CPU)
    for n in range(3, 80):                # never evicted: a captured step reads it at every replay
        stacked._rows((0, n), CPU)
    assert stacked._rows((0, 2), CPU) is kept


def test_a_training_step_is_a_few_dozen_operations_whatever_the_number_of_tensors(tiny):
    """On a GPU a step's time is mostly its kernel count: the optimizer updates every tensor of the
    population at once, so a deeper network adds its layers' operations, not a dozen per tensor.
    (Counted with a dispatch mode: non-view ATen operations, forward, backward and update.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func._schema.name.startswith(("aten::view", "aten::_unsafe_view", "aten::t", "aten::transpose",
                                                  "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::detach",
                                                  "aten::slice", "aten::select", "aten::alias", "aten::_reshape_alias")):
                Count.ops += 1
            return func(*args, **(kwargs or {}))

    def ops_per_step(depth: int) -> int:
        stack = StackedRun(tiny, [Member("a", RunSpec(precision="fp32", depth=depth), s) for s in range(3)], CPU, None,
                           use_graphs=False)
        orders = torch.stack([torch.randperm(len(tiny.train), generator=g) for g in stack.batch_gens])
        x, y, masks = stack._batch(orders, 0)
        Count.ops = 0
        with Count():
            stack._train_step(x, y, masks)
        return Count.ops
    two, four = ops_per_step(2), ops_per_step(4)
    assert two <= 60, two                 # 152 when each of the 6 tensors had its own Adam update
    assert four - two <= 20, (two, four)  # two more hidden layers: forward and backward ops, no optimizer ops


def serial_first_step(data, spec: RunSpec, seed: int) -> dict:
    """Gradients of the serial run's first step (train.fit's objective), by parameter name."""
    gen = seed_everything(seed, CPU)
    model = models.build(spec).train()
    order = torch.randperm(len(data.train), generator=gen)
    idx = order[:spec.batch_size]
    x, y = inputs(data.train.images[idx], data, spec, gen), data.train.labels[idx]
    loss = nn.functional.cross_entropy(model(x), y, label_smoothing=spec.label_smoothing)
    weights = penalties.penalised(model.parameters())
    loss = loss + spec.l1 * penalties.l1_penalty(weights) + spec.l2 * penalties.l2_penalty(weights)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_batched_first_step_gradients_match_serial_runs(tiny):
    # three members that differ in everything a member may differ in: seeds, dropout rates,
    # label smoothing, penalties, augmentation; fp32 so the tolerance is about kernels, not bf16
    base = dict(precision="fp32", depth=2, width=64, dropout=0.2, input_dropout=0.1)
    members = [Member("a", RunSpec(**base), 0),
               Member("b", RunSpec(**{**base, "dropout": 0.5}, label_smoothing=0.1, l2=1e-3), 1),
               Member("c", RunSpec(**base, l1=1e-4, augment="crop+flip"), 2)]
    assert max(first_step_errors(tiny, members)) <= 1e-5


def first_step_errors(data, members: list[Member]) -> list[float]:
    """Per member: the largest difference between its batched and its serial first-step gradient,
    relative to the largest serial gradient entry of that tensor."""
    stack = StackedRun(data, members, CPU, None, use_graphs=False)
    orders = torch.stack([torch.randperm(len(data.train), generator=g) for g in stack.batch_gens])
    grads = stack._views(stack.gradients(*stack._batch(orders, 0))[0])
    return [max(((grads[name][row] - want).abs().max() / want.abs().max()).item()
                for name, want in serial_first_step(data, m.spec, m.seed).items())
            for row, m in enumerate(members)]


def small_cnn(**overrides) -> RunSpec:
    return EXPERIMENTS["cnn"].specs()["conv 32-64, fc 256"].with_overrides(
        precision="fp32", channels=(8, 16), width=32, **overrides)


def test_a_convolution_as_one_batched_matrix_multiply_is_the_grouped_convolution():
    """stacked.conv_as_matmul (FMREPORT_CONV=unfold) against F.conv2d with groups=k: outputs and
    gradients, with and without bias, padding, a stride and a non-square kernel."""
    gen = torch.Generator().manual_seed(0)
    k, c, o = 3, 4, 5
    for layer in (nn.Conv2d(c, o, 3, padding=1), nn.Conv2d(c, o, (3, 2), stride=2, padding=(1, 0))):
        for bias in (True, False):
            w = torch.randn(k, o, c, *layer.kernel_size, generator=gen, requires_grad=True)
            b = torch.randn(k, o, generator=gen, requires_grad=True) if bias else None
            h = torch.randn(6, k * c, 11, 9, generator=gen).contiguous(memory_format=torch.channels_last)
            h.requires_grad_(True)
            outs = [stacked.conv_as_matmul(h, w, b, layer),
                    F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             layer.stride, layer.padding, layer.dilation, groups=k)]
            grads = [torch.autograd.grad(out.square().sum(), [h, w, *([b] if bias else [])]) for out in outs]
            assert outs[0].shape == outs[1].shape
            assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
            for got, want in zip(*grads):
                assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
    h = torch.randn(4, k * c, 8, 8, generator=gen, requires_grad=True)
    w = torch.randn(k, o, c, 3, 3, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # a bf16 CNN: bf16 products, fp32 gradients
        out = stacked.conv_as_matmul(h, w, None, nn.Conv2d(c, o, 3, padding=1))
        want = F.conv2d(h, w.reshape(k * o, c, 3, 3), None, 1, 1, groups=k)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), want.float(), rtol=0.05, atol=0.1)
    assert [g.dtype for g in torch.autograd.grad(out.float().sum(), [h, w])] == [torch.float32] * 2
    with pytest.raises(ValueError, match="FMREPORT_CONV=unfold takes convolutions with zero padding and no dilation"):
        stacked.conv_as_matmul(h, w, None, nn.Conv2d(c, o, 3, dilation=2))


@pytest.mark.parametrize("conv", stacked.CONV_CHOICES)
def test_batched_cnn_first_step_gradients_match_serial_runs(tiny, conv, monkeypatch):
    monkeypatch.setattr(stacked, "CONV", conv)
    # grouped convolutions, per-member dropout masks on channels-last feature maps, flips
    members = [Member("a", small_cnn(batchnorm=False), 0), Member("b", small_cnn(batchnorm=False, dropout=0.5), 1)]
    assert max(first_step_errors(tiny, members)) <= 1e-5
    # With batch norm the batch statistics of [B, k*C, H, W] maps are reduced in another order than
    # those of one member's [B, C, H, W]; batch norm's backward amplifies that rounding in channels
    # of small variance: 0.2-2.5% of the largest gradient entry was measured, so this is looser.
    with_bn = [Member("a", small_cnn(), 0), Member("b", small_cnn(lr=3e-3), 1)]
    assert max(first_step_errors(tiny, with_bn)) <= 0.05


def test_penalties_and_decay_act_on_the_rows_that_have_them_as_they_would_on_all(tiny):
    """A penalty, threshold or decay runs over the consecutive rows of the members that have it (a
    slice), else over all rows: the same gradients and update either way."""
    base = RunSpec(precision="fp32", width=32, optimizer="adamw")
    specs = [base, base.with_overrides(l1=1e-3), base.with_overrides(l1=1e-3), base.with_overrides(l2=1e-2),
             base.with_overrides(weight_decay=0.1), base.with_overrides(l1=1e-3, l1_proximal=True)]
    stack = StackedRun(tiny, [Member(str(i), s, i) for i, s in enumerate(specs)], CPU, None, use_graphs=False)
    assert stack.rows_with == {"l1": slice(1, 3), "l2": slice(3, 4), "weight_decay": slice(4, 5), "l1_prox": slice(5, 6)}
    orders = torch.stack([torch.randperm(len(tiny.train), generator=g) for g in stack.batch_gens])
    batch = stack._batch(orders, 0)
    every = StackedRun(tiny, [Member(str(i), s, i) for i, s in enumerate(specs)], CPU, None, use_graphs=False)
    every.rows_with = dict.fromkeys(every.rows_with, slice(None))
    assert torch.equal(stack.gradients(*batch)[0], every.gradients(*batch)[0])
    for run in (stack, every):   # gradients, penalties, decay, update, soft threshold: two steps
        run._train_step(*batch)
        run._train_step(*batch)
    assert torch.equal(stack.flat, every.flat)
    scattered = StackedRun(tiny, [Member(str(i), s, i) for i, s in enumerate([specs[1], base, specs[1]])], CPU, None,
                           use_graphs=False)
    assert scattered.rows_with["l1"] == slice(None)


def test_the_populations_soft_threshold_is_the_serial_runs_member_by_member():
    """stacked.soft_threshold_ (l1_proximal in a population, a threshold per member) against
    penalties.soft_threshold_ on each member's weights: the same values, ties and zeros included."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 40, 30, generator=gen) * 0.01
    w[0, 0, :4] = torch.tensor([0.0, -0.0, 0.002, -0.002])          # zeros, and |w| == member 0's threshold
    thresholds = torch.tensor([0.002, 0.0, 0.5])                     # a member without L1: nothing moves
    want = w.clone()
    for row, t in zip(want, thresholds.tolist()):
        penalties.soft_threshold_([row], t)
    got = stacked.soft_threshold_(w.clone(), thresholds.view(-1, 1, 1))
    assert torch.equal(got, want) and torch.equal(got[1], w[1]) and (got[2] == 0).all()
    assert (got[0] == 0).sum() == (want[0] == 0).sum() > 4


@pytest.mark.slow
def test_batched_population_matches_serial_runs(tiny):
    specs = [RunSpec(precision="fp32", epochs=2, width=64, dropout=0.2),
             RunSpec(precision="fp32", epochs=2, width=64, dropout=0.5, optimizer="adamw", weight_decay=0.1,
                     label_smoothing=0.1, augment="shift", max_shift=1, test_time_shifts=True),
             RunSpec(precision="fp32", epochs=3, width=64, dropout=0.3, l1=1e-4, l1_proximal=True, lr=3e-3)]
    members = [Member(f"m{i}", s, seed) for i, (s, seed) in enumerate(zip(specs, (0, 1, 2)))]
    finished = []
    pop = fit_population(tiny, members, CPU, backend="batched",
                         on_finish=lambda done: finished.extend(m.name for m, _ in done))
    assert sorted(finished) == ["m0", "m1", "m2"] and finished[-1] == "m2"   # the 3-epoch member last
    for m, got in zip(members, pop):
        want = fit(tiny, m.spec, m.seed, CPU)
        assert [h["epoch"] for h in got["history"]] == [h["epoch"] for h in want["history"]]
        for g, w in zip(got["history"], want["history"]):
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-3)
            assert g["lr"] == w["lr"]
        for key in ("train_acc", "val_acc", "test_acc"):
            assert abs(got["final"][key] - want["final"][key]) <= 0.01, (m.name, key)
        assert set(got["final"]) == set(want["final"])
        assert sum(map(sum, got["final"]["confusion"])) == len(tiny.test)


def test_batched_sgd_with_coupled_weight_decay_per_member_matches_serial_runs(tiny):
    """SGD adds each member's decay to its weights' gradients (not its biases'), as torch.optim.SGD."""
    members = [Member(f"wd {wd}", RunSpec(precision="fp32", epochs=2, width=64, optimizer="sgd", lr=0.05,
                                          weight_decay=wd), seed) for seed, wd in enumerate((0.0, 0.05))]
    for m, got in zip(members, fit_population(tiny, members, CPU, backend="batched")):
        want = fit(tiny, m.spec, m.seed, CPU)
        for g, w in zip(got["history"], want["history"]):
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-4), m.name
            assert g["val_loss"] == pytest.approx(w["val_loss"], rel=1e-4), m.name


def test_the_populations_adam_update_is_the_serial_runs_fused_adam_bit_for_bit(tiny):
    """Given the same gradients, three steps of a population's Adam update (torch's fused kernel on
    each member's row, one call per learning-rate schedule) leave every member's parameters and
    moments exactly where torch.optim.Adam(fused=True), the serial run's optimizer, leaves them
    with the same learning rate: the population's is read from an fp32 table, so the serial
    optimizer gets that fp32 value here (with Python's 1e-3 the parameters differ in the last bit)."""
    members = [Member(f"m{i}", RunSpec(precision="fp32", width=32, lr=lr), i) for i, lr in enumerate((1e-3, 3e-3, 1e-3))]
    stack = StackedRun(tiny, members, CPU, None, use_graphs=False)
    assert sorted(rows for rows, _ in stack.update_groups) == [[0, 2], [1]]
    serial = [torch.nn.Parameter(stack.flat[j].clone()) for j in range(3)]
    optimizers = [torch.optim.Adam([p], lr=torch.tensor(m.spec.lr, dtype=torch.float32).item(), fused=True)
                  for p, m in zip(serial, members)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        g = torch.randn(stack.flat.shape, generator=gen)
        with torch.no_grad():
            stack._update(g, stack.hyper["lr_table"][:, :1])
        for j, (p, opt) in enumerate(zip(serial, optimizers)):
            p.grad = g[j].clone()
            opt.step()
    for j, (p, opt) in enumerate(zip(serial, optimizers)):
        state = opt.state[p]
        assert torch.equal(stack.flat[j], p.detach()) and torch.equal(stack.slots[0][j], state["exp_avg"])
        assert torch.equal(stack.slots[1][j], state["exp_avg_sq"]) and stack.adam_steps[j].item() == state["step"].item() == 3


def adamw_against_serial(data, spec: RunSpec, device: torch.device, graphs: bool) -> None:
    """AdamW members (two decays, two schedules) beside an Adam one: given the same gradients, three
    population updates (eager, or replays of one captured update) leave every parameter and moment
    exactly where the serial run's optimizer (train.make_optimizer: AdamW(fused=True) on two
    groups, the weights decaying, biases and norms not) leaves them. The learning rates are powers
    of two, the same in the population's fp32 table as in the serial optimizer's Python floats."""
    from experiments.train import make_optimizer
    variants = [dict(optimizer="adam"), dict(optimizer="adamw", weight_decay=0.05),
                dict(optimizer="adamw", weight_decay=0.5, lr=2 ** -9), dict(optimizer="adamw", weight_decay=0.05)]
    members = [Member(f"m{i}", spec.with_overrides(**{"lr": 2 ** -10, **v}), i) for i, v in enumerate(variants)]
    stack = StackedRun(data, members, device, None, use_graphs=graphs)
    assert sorted(decay for _, decay in stack.update_groups) == [0.0, 0.05, 0.5]
    serial = []
    for j, m in enumerate(members):
        model = models.build(m.spec, stack.in_features).to(device)
        model.load_state_dict(stack.member_state(j))
        serial.append((model, make_optimizer(model, m.spec)))
    g, lr = torch.zeros_like(stack.flat), stack.hyper["lr_table"][:, :1].clone()
    update = stack._graph_of(lambda: stack._update(g, lr)).replay if graphs else lambda: stack._update(g, lr)
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(3):
        g.copy_(torch.randn(g.shape, generator=gen, device=device))
        with torch.no_grad():
            update()
        for j, (model, opt) in enumerate(serial):
            grads = stack._views(g)
            for name, param in model.named_parameters():
                param.grad = grads[name][j].clone()
            opt.step()
    slots = [stack._views(t) for t in stack.slots]
    for j, (model, opt) in enumerate(serial):
        for name, param in model.named_parameters():
            state = opt.state[param]
            assert torch.equal(stack.params[name][j], param.detach()), (j, name)
            assert torch.equal(slots[0][name][j], state["exp_avg"]) and torch.equal(slots[1][name][j], state["exp_avg_sq"])


@pytest.mark.parametrize("spec", [RunSpec(precision="fp32", width=32), small_cnn()], ids=["mlp", "cnn"])
def test_the_populations_adamw_update_is_the_serial_runs_fused_adamw_bit_for_bit(tiny, spec):
    adamw_against_serial(tiny, spec, CPU, graphs=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("spec", [RunSpec(precision="fp32", width=32), small_cnn()], ids=["mlp", "cnn"])
def test_on_cuda_a_replayed_fused_adamw_update_is_the_serial_optimizers(tiny, spec):
    adamw_against_serial(on_cuda(tiny), spec, torch.device("cuda"), graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_on_cuda_a_replayed_fused_adam_update_is_the_serial_optimizers(tiny):
    """CUDA's fused Adam kernel is not the CPU's: three replays of a captured population update
    leave each member, on a 16-byte aligned row (0) and on unaligned ones (1, 2: P % 4 == 2), in two
    learning-rate groups, where torch.optim.Adam(fused=True) leaves it given the same gradients."""
    cuda = torch.device("cuda")
    data = on_cuda(tiny)
    members = [Member(f"m{i}", RunSpec(precision="fp32", width=32, lr=lr), i) for i, lr in enumerate((1e-3, 3e-3, 1e-3))]
    stack = StackedRun(data, members, cuda, None, use_graphs=True)
    assert stack.flat.shape[1] % 4 == 2 and sorted(rows for rows, _ in stack.update_groups) == [[0, 2], [1]]
    serial = [torch.nn.Parameter(stack.flat[j].clone()) for j in range(3)]
    optimizers = [torch.optim.Adam([p], lr=torch.tensor(m.spec.lr, dtype=torch.float32).item(), fused=True)
                  for p, m in zip(serial, members)]
    g, lr = torch.zeros_like(stack.flat), stack.hyper["lr_table"][:, :1].clone()
    graph = stack._graph_of(lambda: stack._update(g, lr))     # its warm-up puts every state tensor back
    gen = torch.Generator(device=cuda).manual_seed(0)
    for _ in range(3):
        g.copy_(torch.randn(g.shape, generator=gen, device=cuda))
        graph.replay()
        for j, (p, opt) in enumerate(zip(serial, optimizers)):
            p.grad = g[j].clone()
            opt.step()
    torch.cuda.synchronize()
    for j, (p, opt) in enumerate(zip(serial, optimizers)):
        state = opt.state[p]
        assert torch.equal(stack.flat[j], p.detach()), j
        assert torch.equal(stack.slots[0][j], state["exp_avg"]) and torch.equal(stack.slots[1][j], state["exp_avg_sq"])
        assert stack.adam_steps[j].item() == state["step"].item() == 3


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_scales_each_members_weights_and_leaves_biases(tiny, optimizer):
    """One update with zero gradients leaves only the decay: each member's weights, of every rank
    (a convolution's [k, out, in, h, w] as a linear layer's [k, out, in]), shrink by its own factor
    (AdamW: 1 - lr * wd; SGD's coupled decay: 1 - lr * (1 + momentum) * wd); biases do not move."""
    members = [Member(f"wd {wd}", small_cnn(batchnorm=False, optimizer=optimizer, lr=0.01, weight_decay=wd), seed)
               for seed, wd in enumerate((0.0, 0.1))]
    stack = StackedRun(tiny, members, CPU, None, use_graphs=False)
    before = {name: v.clone() for name, v in stack.params.items()}
    lr = torch.full((2, 1), 0.01)
    with torch.no_grad():
        stack._update(torch.zeros_like(stack.flat), lr)
    for name, v in stack.params.items():
        if v.dim() < 3:
            assert torch.equal(v, before[name]), name
            continue
        shrink = 0.01 * 0.1 * ((1 + members[1].spec.momentum) if optimizer == "sgd" else 1)
        assert torch.equal(v[0], before[name][0]), name
        assert torch.allclose(v[1], before[name][1] * (1 - shrink), rtol=1e-6, atol=0), name
    assert {v.dim() for v in stack.params.values()} >= {2, 3, 5}   # biases, linear and conv weights


@pytest.mark.parametrize("spec", [
    RunSpec(precision="fp32", width=64, batchnorm=True, dropout=0.3, test_time_shifts=True),
    RunSpec(precision="fp32", model="cnn", channels=(4, 8), width=32, test_time_shifts=True)], ids=["mlp", "cnn"])
def test_finished_members_are_evaluated_together_as_train_evaluate_evaluates_each(tiny, spec):
    """Members that stop in the same epoch are evaluated in one forward pass per batch and view:
    within float rounding of train.evaluate on each member's own module (1e-5 relative loss, at most
    one prediction in 1,000 apart)."""
    from experiments.train import SHIFTED_VIEWS, evaluate
    stack = StackedRun(tiny, [Member("a", spec, 0), Member("b", spec, 1)], CPU, 2, use_graphs=False)
    states = [stack.member_state(r) for r in range(2)]
    losses, accs, preds = stack._evaluate(tiny.test, SHIFTED_VIEWS, stacked.stacked_states(states))
    for model, state, loss, acc, pred in zip(stack.models, states, losses, accs, preds):
        model.load_state_dict(state)
        want_loss, want_acc, want_pred = evaluate(model, tiny.test, tiny, False, SHIFTED_VIEWS)
        assert loss == pytest.approx(want_loss, rel=1e-5) and abs(acc - want_acc) <= 1e-3
        assert (pred != want_pred).sum() <= 1


def test_a_failed_graph_capture_trains_eagerly_and_says_so(tiny, monkeypatch):
    """On CUDA a capture can fail (an op that syncs the host, an old driver): the population goes on
    with eager steps, the same arithmetic, and the provenance says so."""
    spec = RunSpec(precision="fp32", epochs=1, width=32)
    members = [Member("a", spec, 0), Member("b", spec, 1)]
    eager = fit_population(tiny, members, CPU, "batched", cuda_graphs=False)

    def capture(*args):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(stacked, "INPUTS", "graph")
    monkeypatch.setattr(StackedRun, "_capture_with_inputs", capture)   # first the step with its inputs,
    monkeypatch.setattr(StackedRun, "_capture", capture)               # then the step on copied-in inputs
    notes = []
    tried = fit_population(tiny, members, CPU, "batched", cuda_graphs=True, notes=notes)
    assert [without_times(r) for r in tried] == [without_times(r) for r in eager]
    assert notes == ["CUDA graph capture with the step's inputs inside failed (RuntimeError: operation not "
                     "permitted when stream is capturing): 2 member(s) had them made on the host",
                     "CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing): "
                     "2 member(s) trained eagerly"]


def sgd(lr: float) -> RunSpec:
    return RunSpec(precision="fp32", epochs=3, depth=2, width=64, optimizer="sgd", schedule="constant", lr=lr)


def test_a_diverging_member_leaves_the_others_unchanged(tiny):
    calm = [Member("lr 0.1", sgd(0.1), 0), Member("lr 0.01", sgd(0.01), 1)]
    with_bad = fit_population(tiny, calm + [Member("lr 50", sgd(50.0), 2)], CPU, backend="batched")
    with_good = fit_population(tiny, calm + [Member("lr 0.05", sgd(0.05), 2)], CPU, backend="batched")
    assert with_bad[2]["final"]["diverged"] and not with_good[2]["final"]["diverged"]
    assert with_bad[2]["final"]["epochs"] < 3            # it stopped; the others went on
    for a, b in zip(with_bad[:2], with_good[:2]):
        assert not a["final"]["diverged"] and a["final"]["epochs"] == 3
        assert without_times(a) == without_times(b)      # bit for bit, histories and final metrics


@pytest.mark.slow
def test_a_member_with_patience_stops_like_its_serial_run_and_keeps_its_best_weights(fmnist):
    # as in test_train: 512 images, a wide net and a high lr overfit fast and the val loss rises
    data = fmnist.subset(512, 1000)
    stopper = RunSpec(precision="fp32", epochs=40, width=512, lr=3e-3, schedule="constant", patience=2,
                      batch_size=64)
    runner_up = stopper.with_overrides(patience=0, epochs=6)
    got, _ = fit_population(data, [Member("stop", stopper, 0), Member("full", runner_up, 1)], CPU, "batched")
    want = fit(data, stopper, 0, CPU)
    assert got["final"]["epochs"] == want["final"]["epochs"] < 40
    assert got["final"]["best_epoch"] == want["final"]["best_epoch"]
    best = got["history"][got["final"]["best_epoch"] - 1]
    assert got["final"]["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)   # restored, not the last
    assert got["history"][-1]["val_loss"] > best["val_loss"]


def test_tf32_is_set_for_a_cuda_block_only_and_put_back_after_it():
    """stacked.cuda_matmul: CUDA's fp32 matrix multiplies as FMREPORT_MATMUL says for one
    experiment, torch's process-wide flag restored after it (the bench that follows in gpu_check
    measures true fp32), even when the block fails; nothing changes on the CPU; a typo is named."""
    flag = lambda: torch.backends.cuda.matmul.allow_tf32   # noqa: E731 (a flag even without a GPU)
    before = flag()
    with stacked.cuda_matmul(torch.device("cuda"), "tf32") as mode:
        assert mode == "tf32" and flag() is True
        with stacked.cuda_matmul(torch.device("cuda"), "ieee"):
            assert flag() is False
        assert flag() is True
    assert flag() is before
    with pytest.raises(RuntimeError, match="boom"), stacked.cuda_matmul(torch.device("cuda"), "tf32"):
        raise RuntimeError("boom")
    assert flag() is before
    with stacked.cuda_matmul(torch.device("cpu"), "tf32") as mode:
        assert mode is None and flag() is before
    with pytest.raises(ValueError, match="FMREPORT_MATMUL='TF32' is not one of ieee, tf32"):
        with stacked.cuda_matmul(torch.device("cpu"), "TF32"):
            pass


def test_members_are_built_while_their_lane_holds_the_global_generator(tiny, monkeypatch):
    """Building a member seeds torch's global generator and draws its weights from it: each lane
    does so holding stacked.SHARED, so no other lane reseeds it in between."""
    from experiments import models
    held, build = [], models.build
    monkeypatch.setattr(models, "build", lambda *a, **k: held.append(stacked.SHARED._is_owned()) or build(*a, **k))
    stacked.StackedRun(tiny, [Member("a", RunSpec(width=16), s) for s in range(3)], CPU,
                       2, use_graphs=False)
    assert held == [True, True, True] and not stacked.SHARED._is_owned()


def test_populations_group_members_by_shape():
    exp = EXPERIMENTS["batchnorm"]
    members = [Member(n, s, seed) for n, s in exp.specs().items() for seed in range(3)]
    groups = population.populations(members, "batched")
    assert sorted(len(g) for g in groups) == [6, 6]      # with and without batch norm
    assert all(len({population.shape_key(m.spec) for m in g}) == 1 for g in groups)
    assert population.populations(members, "loop") == [[m] for m in members]
    cnn = [Member("cnn", EXPERIMENTS["cnn"].specs()["conv 32-64, fc 256"], s) for s in range(3)]
    assert [len(g) for g in population.populations(cnn, "batched")] == [3]   # grouped convolutions


def test_the_batched_backend_has_its_own_fingerprint_and_the_loop_backend_keeps_the_committed_one():
    exp = EXPERIMENTS["depth"]
    _, _, loop_fp, loop = runner.plan(exp, None, None, False, backend="loop")
    _, _, batched_fp, batched = runner.plan(exp, None, None, False, backend="batched")
    assert (loop, batched) == ("loop", "batched") and loop_fp != batched_fp
    assert planning.is_fresh(ROOT / "results" / "depth.json", loop_fp)
    transfer = EXPERIMENTS["transfer"]   # nothing to stack: the loop backend, and its fingerprint
    assert runner.plan(transfer, None, None, False, backend="batched")[2:] == runner.plan(transfer, None, None, False)[2:]


@pytest.mark.slow
def test_a_batched_result_file_validates_and_renders(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(ROOT / "results", res)
    out = res / "dropout.json"
    result = runner.run_experiment(EXPERIMENTS["dropout"], out, ["run", "dropout", "--quick"], seeds=3, quick=True,
                                   device_name="cpu", backend="batched", log=lambda *a: None,
                                   sets={"precision": "fp32"})   # batched bf16 is slow on a CPU
    loaded = results.load(out)
    assert loaded["provenance"]["backend"] == "batched"
    # 3 seeds: no dropout alone (no dropout module), dropout 0.2 and 0.5 as one population (one shape)
    assert sorted(p["size"] for p in loaded["provenance"]["populations"]) == [3, 6]
    # where each population's time went: all four phases, none negative, within the run's wall time;
    # finishing's timed parts are within it
    phases = [p["seconds"] for p in loaded["provenance"]["populations"]]
    top = ["build", "evaluate", "finish", "steps"]
    assert all(sorted(ph) == sorted(top + list(stacked.PARTS)) and min(ph.values()) >= 0 for ph in phases)
    assert all(ph["steps.capture"] == 0 for ph in phases)                   # no CUDA graph on the CPU
    assert all(0 < sum(ph[k] for k in stacked.FINISH_PARTS) <= ph["finish"] for ph in phases)
    assert 0 < sum(sum(ph[k] for k in top) for ph in phases) <= loaded["provenance"]["wall_seconds"]
    assert loaded["fingerprint"] == result["fingerprint"]
    assert all(math.isfinite(r["final"]["test_acc"]) for v in loaded["variants"] for r in v["runs"])
    build = subprocess.run([sys.executable, str(ROOT / "report" / "build.py"), "--results", str(res),
                            "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Dropout" in html and f"{loaded['variants'][1]['summary']['test_acc']['mean'] * 100:.2f}" in html


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_give_the_eager_batched_result(fmnist):
    data = fmnist.subset(2048, 1000)
    cuda = torch.device("cuda")
    data = on_cuda(data)
    members = [Member("a", RunSpec(epochs=2, dropout=0.2), 0), Member("b", RunSpec(epochs=3, dropout=0.5), 1)]
    phases = {}
    graphed = fit_population(data, members, cuda, "batched", cuda_graphs=True, phases=phases)
    eager = fit_population(data, members, cuda, "batched", cuda_graphs=False)
    # the captures' time is counted, within the steps' (full and last batch, again after member a ends)
    assert 0 < phases["steps.capture"] < phases["steps"]
    for g, e in zip(graphed, eager):
        for hg, he in zip(g["history"], e["history"]):
            assert hg["train_loss"] == pytest.approx(he["train_loss"], rel=1e-4)
        assert abs(g["final"]["test_acc"] - e["final"]["test_acc"]) <= 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("conv", stacked.CONV_CHOICES)
def test_cuda_graphs_capture_the_cnn_under_each_convolution_setting_with_tf32(fmnist, conv, monkeypatch):
    """The gate before the GPU study (`make gpu-check` runs `pytest -k cuda_graphs`) for the settings
    gpu_probe may choose: a CNN population with batch norm and dropout, under FMREPORT_CONV=conv and
    TF32 matrix multiplies, captures its steps (no fallback noted) and trains as its eager steps do."""
    monkeypatch.setattr(stacked, "CONV", conv)
    data = fmnist.subset(512, 256)
    cuda = torch.device("cuda")
    data = on_cuda(data)
    members = [Member("a", small_cnn(epochs=2, dropout=0.3), 0), Member("b", small_cnn(epochs=2, lr=3e-3), 1)]
    notes = []
    with stacked.cuda_matmul(cuda, "tf32"):
        graphed = fit_population(data, members, cuda, "batched", cuda_graphs=True, notes=notes)
        eager = fit_population(data, members, cuda, "batched", cuda_graphs=False)
    assert not [n for n in notes if "failed" in n], notes
    for g, e in zip(graphed, eager):
        for hg, he in zip(g["history"], e["history"]):
            assert hg["train_loss"] == pytest.approx(he["train_loss"], rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("inputs_in_graph", ["host", "graph"])
def test_lanes_cuda_two_populations_trained_at_once_train_as_each_alone(fmnist, inputs_in_graph, monkeypatch):
    """The gate for lanes on a card (`make gpu-check` and gpu_session run the study in lanes only
    where `-k lanes_cuda` passes, a gate apart from the CUDA-graph tests' so that a failure here
    does not cost the probe's choices): two populations trained at once, each in its own thread and stream,
    capturing while the other replays (and, with the inputs in the graph, drawing from registered
    generators), give the runs each gives trained alone: the same losses within 1e-3 relative (cuBLAS
    may pick other kernels while several streams are active, so bit for bit is not promised; a member
    that drew another's batches or masks would be off by far more)."""
    from experiments import lanes
    monkeypatch.setattr(stacked, "INPUTS", inputs_in_graph)
    cuda = torch.device("cuda")
    data = on_cuda(fmnist.subset(1024 + 100, 500))
    pops = {"mlp": [Member("a", RunSpec(epochs=3, dropout=0.2, augment="crop+flip"), 0),
                    Member("b", RunSpec(epochs=2, dropout=0.5), 1)],
            "cnn": [Member("c", small_cnn(epochs=2, dropout=0.3), 2), Member("d", small_cnn(epochs=3), 3)]}
    alone = {name: fit_population(data, members, cuda, "batched", cuda_graphs=True) for name, members in pops.items()}
    notes = []
    jobs = [(name, lambda members=members: fit_population(data, members, cuda, "batched", cuda_graphs=True, notes=notes))
            for name, members in pops.items()]
    together = {name: (runs, err) for name, runs, err in lanes.run(jobs, 2, cuda)}
    assert not [n for n in notes if "failed" in n], notes
    for name, runs in alone.items():
        assert together[name][1] is None, together[name][1]
        for a, b in zip(runs, together[name][0]):
            assert [h["train_loss"] for h in b["history"]] == pytest.approx([h["train_loss"] for h in a["history"]], rel=1e-3)
            assert [h["val_loss"] for h in b["history"]] == pytest.approx([h["val_loss"] for h in a["history"]], rel=1e-3)


def test_steps_that_make_their_own_inputs_train_as_steps_on_host_made_inputs(tiny, monkeypatch):
    """stacked.INPUTS "graph" on the CPU, with each captured step stood in for by the same function
    run eagerly at every replay: the loop's bookkeeping (the device-side step counter, a last,
    shorter batch, a population that shrinks) gives bit for bit the runs of host-made inputs, and
    the provenance says where the inputs were made."""
    base = RunSpec(precision="fp32", width=32, dropout=0.2, augment="crop+flip", schedule="constant")
    members = [Member("a", base.with_overrides(epochs=2), 0), Member("b", base.with_overrides(epochs=3), 1),
               Member("c", base.with_overrides(epochs=3, augment="none"), 2)]
    data = tiny.subset(3 * 256 + 100, 500)
    host = fit_population(data, members, CPU, "batched", cuda_graphs=False)

    class Replay:                     # what a captured step does at each replay, run eagerly
        def __init__(self, stack, size):
            self.stack, self.size = stack, size

        def replay(self):
            self.stack._train_step(*self.stack._step_inputs(self.size))
            self.stack.batch_index.add_(1)
    captures = []
    monkeypatch.setattr(stacked, "INPUTS", "graph")
    monkeypatch.setattr(StackedRun, "_capture_with_inputs", lambda self, size: captures.append(size) or Replay(self, size))
    notes = []
    graphed = fit_population(data, members, CPU, "batched", cuda_graphs=True, notes=notes)
    assert [without_times(r) for r in graphed] == [without_times(r) for r in host]
    assert captures == [256, 100, 256, 100]   # both sizes, and again after member a finished
    assert notes == ["each step's inputs (rows, augmentation, dropout masks) made inside its CUDA graph"]


@pytest.mark.parametrize("last_batch", [256, 232])
def test_a_capture_warm_up_at_the_last_step_of_training_stays_in_bounds_and_changes_nothing(fmnist, last_batch):
    """A CUDA graph capture first runs the step three times (on a side stream; the same warm-up runs
    here on the CPU). Captured at the last step of training (a last, shorter batch, or a population
    recaptured after members stopped), the warm-up must not read past the learning-rate tables or
    the batch orders, and must leave every tensor and the members' generators as they were."""
    data = fmnist.subset(3 * 256 + last_batch, 500)
    spec = RunSpec(precision="fp32", epochs=1, width=32, augment="crop+flip", dropout=0.2)
    stack = StackedRun(data, [Member("a", spec, 0), Member("b", spec.with_overrides(augment="none"), 1)], CPU,
                       None, use_graphs=False)
    stack.start_epoch()
    last = stack.steps_per_epoch - 1
    stack.step.fill_(last)
    stack.batch_index.fill_(last)
    gens = stack._step_generators()
    assert gens == [stack.batch_gens[0], *stack.dropout_gens]   # member b draws no augmentation
    before, drawn = [t.clone() for t in stack._state()], [g.get_state() for g in gens]

    def step():
        stack._train_step(*stack._step_inputs(last_batch))
        stack.batch_index.add_(1)
    stack._warm_up(step, gens)
    assert all(torch.equal(a, b) for a, b in zip(before, stack._state()))
    assert all(torch.equal(g.get_state(), d) for g, d in zip(gens, drawn))
    step()   # and the real step is where it was: the last one, in bounds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_with_the_inputs_inside_draw_what_the_eager_step_draws(fmnist, monkeypatch):
    """stacked.INPUTS "graph": the captured step makes its own inputs from the members' registered
    generators. Each replay must feed the step exactly the rows, augmented pixels, labels and
    dropout masks the eager step gets, over two epochs with a last, shorter batch each."""
    cuda = torch.device("cuda")
    data = fmnist.subset(1000, 500)
    data = on_cuda(data)
    monkeypatch.setattr(stacked, "INPUTS", "graph")
    base = RunSpec(precision="fp32", epochs=2, dropout=0.3)
    members = [Member("crop", base.with_overrides(augment="crop+flip"), 0),
               Member("shift", base.with_overrides(augment="shift+flip", dropout=0.5), 1), Member("none", base, 2)]
    fed = {}
    real = StackedRun._train_step

    def recording(self, x, y, masks):   # the graphed run's tensors are the captured ones, refilled by each replay
        fed.setdefault(id(self), []).append((x, y, masks))
        return real(self, x, y, masks)
    monkeypatch.setattr(StackedRun, "_train_step", recording)
    graphed = StackedRun(data, members, cuda, None, use_graphs=True)
    eager = StackedRun(data, members, cuda, None, use_graphs=False)
    assert graphed.inputs_in_graph and not eager.inputs_in_graph
    captured = {}
    for _ in range(2):
        graphed.start_epoch()
        eager.start_epoch()
        for b in range(graphed.steps_per_epoch):
            had = len(graphed.input_graphs)
            size = graphed._step(b)
            if len(graphed.input_graphs) > had:
                captured[size] = fed[id(graphed)][-1]
            assert eager._step(b) == size
            x, y, masks = captured[size]
            want_x, want_y, want_masks = fed[id(eager)][-1]
            assert torch.equal(x, want_x) and torch.equal(y, want_y)
            assert masks.keys() == want_masks.keys() and all(torch.equal(masks[i], want_masks[i]) for i in masks)
    assert set(captured) == {256, 1000 - 3 * 256} and graphed.inputs_error is None
    torch.testing.assert_close(graphed.flat, eager.flat, rtol=1e-4, atol=1e-6)


def test_members_that_finish_together_are_saved_in_one_progress_write(tmp_path, monkeypatch):
    """A stacked population's members that stop in one epoch reach the progress file in one write
    (a write per member re-encodes every run saved so far); each epoch's finishers are still saved
    before the next epoch trains, so a killed run resumes from them."""
    monkeypatch.setattr(runner, "PROGRESS_DIR", tmp_path / "progress")
    writes = []
    real = results.write_atomic

    def counting(path, obj):
        if Path(path).parent == tmp_path / "progress":
            writes.append(len(json.loads(obj)["runs"].get("early stopping", {})) +
                          len(json.loads(obj)["runs"].get("no early stopping", {})))
        real(path, obj)
    monkeypatch.setattr(results, "write_atomic", counting)
    result = runner.run_experiment(EXPERIMENTS["early_stopping"], tmp_path / "es.json", ["test"], seeds=3, quick=True,
                                   device_name="cpu", fresh=True, backend="batched", log=lambda *a: None)
    stops = sorted({r["final"]["epochs"] for v in result["variants"] for r in v["runs"]})
    assert len(writes) == len(stops) and writes[-1] == 6, (writes, stops)   # one write per epoch with finishers
    assert writes == sorted(writes)


def test_a_population_that_runs_out_of_memory_is_split_and_keeps_its_finished_members(tiny, monkeypatch):
    specs = [RunSpec(precision="fp32", width=64, epochs=e) for e in (1, 2, 2, 2)]
    members = [Member(f"m{i}", s, i) for i, s in enumerate(specs)]
    whole = fit_population(tiny, members, CPU, "batched")
    real_step = StackedRun._run_step

    def step(self, *args):   # the card fills up once the population is 3 members or more
        if len(self.members) == 4 and len(self.alive) == 3:   # after m0 finished and the stack shrank
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args)
    monkeypatch.setattr(StackedRun, "_run_step", step)
    finished, sizes, lines = [], [], []
    split = fit_population(tiny, members, CPU, "batched", trained_as=sizes, log=lines.append,
                           on_finish=lambda done: finished.extend(m.name for m, _ in done))
    assert finished.count("m0") == 1 and sorted(finished) == ["m0", "m1", "m2", "m3"]   # m0 not retrained
    assert sizes == [2, 1] and "split into populations of 2 and 1" in lines[0]
    assert [without_times(r) for r in split] == [without_times(r) for r in whole]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), RuntimeError("boom")])
def test_a_population_that_fails_lets_go_of_its_graphs_holding_the_lock_first(tiny, monkeypatch, error):
    """A population whose training raises drops its CUDA graphs through _drop_graphs (holding
    stacked.SHARED: torch 2.11 unregisters a destroyed graph without a lock, which must not overlap
    another lane's capture) before it is split or the error goes on, not whenever it is collected."""
    dropped = []
    real_drop = StackedRun._drop_graphs

    def drop(self):
        dropped.append(len(self.members))
        real_drop(self)

    def step(self, *args):
        if len(self.members) == 2:
            raise error
        return real_step(self, *args)
    real_step = StackedRun._run_step
    monkeypatch.setattr(StackedRun, "_drop_graphs", drop)
    monkeypatch.setattr(StackedRun, "_run_step", step)
    members = [Member(f"m{i}", RunSpec(precision="fp32", width=32, epochs=1), i) for i in range(2)]
    if isinstance(error, torch.cuda.OutOfMemoryError):
        fit_population(tiny, members, CPU, "batched", log=lambda *a: None)   # split in two, each trains
        assert dropped == [2, 1, 1]                    # the failed pair's, then each single's at its end
    else:
        with pytest.raises(RuntimeError, match="boom"):
            fit_population(tiny, members, CPU, "batched", log=lambda *a: None)
        assert dropped == [2]


def test_one_member_that_does_not_fit_is_a_clear_error(tiny, monkeypatch):
    def step(self, *args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
    monkeypatch.setattr(StackedRun, "_run_step", step)
    members = [Member("huge", RunSpec(width=64, epochs=1), s) for s in range(2)]
    with pytest.raises(population.DeviceMemoryError, match=r"huge, seed \d\) does not fit .*80.00 GiB"):
        fit_population(tiny, members, CPU, "batched", log=lambda *a: None)
