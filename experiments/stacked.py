"""The batched backend's stacked network: every tensor of a population has the member as its
leading dimension (population.py groups the members and drives it).

StackedRun builds each member as its serial run (same seed, models.build), stacks their weights,
and trains them with one forward, loss, backward and optimizer step for all (on CUDA one CUDA graph
per batch size); train_inputs makes each step's inputs with every member's own generators; the
members that stop in one epoch are evaluated together and finished as serial runs (train.run_record).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import threading
import time
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from . import models
from .catalog import RunSpec
from .data import FashionMNIST, Split, crop_boxes, crop_resize_flip
from .train import (EVAL_BATCH, SHIFTED_VIEWS, SINGLE_VIEW, autocast, inputs, lr_at, mean_over_views, run_record,
                    seed_everything)

if TYPE_CHECKING:
    from .population import Member

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8          # torch.optim.Adam/AdamW defaults, as train.make_optimizer uses
# How a CNN population's convolutions run: "split", one dense convolution per member, or "grouped",
# one grouped convolution for all; and whether cuDNN autotunes each shape on a GPU. On an H200 a step
# of `cnn`'s 10 members took 6.95 ms split and 8.35 ms grouped, and autotuning changed neither by more
# than 2% (results/gpu-probe.json, from `python -m experiments.gpu_probe`, which times them all).
# "unfold" (not yet run on a GPU): each layer's convolution as one batched matrix multiply of every
# member's kernel with its im2col columns, [k, C*3*3, B*H*W], at cuDNN's convolution precision:
# about a dozen kernels a layer for all members, forward and backward, instead of several cuDNN
# kernels per member, at the cost of copying the columns (for `cnn`'s second layer ~0.6 GB a
# training step, ~4.6 GB transient per evaluation batch of 2,048 images).
CONV = os.environ.get("FMREPORT_CONV", "split")
CONV_CHOICES = ("split", "grouped", "unfold")
CUDNN_BENCHMARK = os.environ.get("FMREPORT_CUDNN_BENCHMARK", "0") == "1"
# Where a CUDA-graphed training step gets its inputs (batch rows, augmentation, dropout masks):
# "host": made eagerly before each replay and copied in (the default, as measured at 46b833d);
# "graph": made inside the captured step from the members' registered generators, so the host's
# work a step is one replay (plus two small launches per registered generator, torch's own). On an
# H200 at 46b833d `augmentation`'s 40 members took 3.5 ms a step against 1.4 ms for `l1_proximal`'s
# 40 of the same shape without augmentation (results/gpu-check.json: steps seconds / 2,110 steps),
# so the ~150 small launches a step for their draws may bound it. gpu_probe times both and names
# the faster; `gpu_check --probe` runs the study with its choice. Not yet run on a GPU.
INPUTS = os.environ.get("FMREPORT_INPUTS", "host")
# How CUDA runs fp32 matrix multiplies: "ieee", true fp32 as on the CPU (PyTorch's default), or
# "tf32", on tensor cores with inputs rounded to TF32's 10-bit mantissa and fp32 sums. On an H200
# at 46b833d the fp32 populations' steps were most of the study's time (`regularization`'s 100
# members: 31 GFLOP in 3.4 ms a step, ~9 TFLOP/s, against 51 TFLOP/s for one large fp32 torch.mm).
# gpu_probe times both; `gpu_check --probe` runs the study with the faster and compares its
# accuracies with the CPU's. The CNN's convolutions keep cuDNN's precision either way (TF32 by
# torch's default, torch.backends.cudnn.allow_tf32; FMREPORT_CONV=unfold too). Not yet run on a GPU.
MATMUL = os.environ.get("FMREPORT_MATMUL", "ieee")
MATMUL_CHOICES = ("ieee", "tf32")
# Parts of a population's phases timed apart (StackedRun.train): part of theirs, not beside them.
# steps.capture: the CUDA-graph captures, warm-up included (again after every shrink).
FINISH_PARTS = ("finish.evaluate", "finish.records", "finish.save")
PARTS = ("steps.capture", *FINISH_PARTS)
PHASES = ("steps", "evaluate", "finish", *PARTS)   # StackedRun.phase_seconds (population.py adds "build")
_FAILED_GRAPHS: list = []   # graphs whose capture failed, kept alive (torch 2.11's allocator keeps a pointer)
# What populations training side by side (lanes.py: one thread each) share in torch's process-wide
# state, taken by one of them at a time: the global RNG, which building a member seeds and draws its
# initial weights from (as its serial run does), and CUDA graph capture (the default generator is
# registered with every graph, and torch.cuda.graph captures on one shared side stream).
SHARED = threading.RLock()


def check_settings() -> None:
    """A ValueError naming each FMREPORT_* switch above whose value the engine does not know."""
    bad = [f"{name}={value!r} is not one of {', '.join(allowed)}"
           for name, value, allowed in (("FMREPORT_CONV", CONV, CONV_CHOICES),
                                        ("FMREPORT_INPUTS", INPUTS, ("host", "graph")),
                                        ("FMREPORT_MATMUL", MATMUL, MATMUL_CHOICES),
                                        ("FMREPORT_CUDNN_BENCHMARK", os.environ.get("FMREPORT_CUDNN_BENCHMARK", "0"),
                                         ("0", "1"))) if value not in allowed]
    if bad:
        raise ValueError("; ".join(bad) + " (README: 'On a GPU: populations')")


@contextlib.contextmanager
def cuda_matmul(device: torch.device, mode: str | None = None):
    """Run the block with CUDA's fp32 matrix multiplies as `mode` says (default MATMUL), and put
    torch's process-wide setting back after it; yields the mode in force, None off CUDA, where
    nothing changes (the CPU's results stay bit for bit)."""
    mode = MATMUL if mode is None else mode
    if mode not in MATMUL_CHOICES:
        raise ValueError(f"FMREPORT_MATMUL={mode!r} is not one of {', '.join(MATMUL_CHOICES)} "
                         "(ieee: true fp32, the default; tf32: CUDA's tensor cores)")
    if device.type != "cuda":
        yield None
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    if saved == (mode == "tf32"):   # already so: touches nothing (lanes share the setting: lanes.py)
        yield mode
        return
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        yield mode
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


class StackedRun:
    """The batched backend: every tensor of the population has the member as its leading dimension."""

    def __init__(self, data: FashionMNIST, members: list[Member], device: torch.device,
                 max_batches: int | None, use_graphs: bool):
        self.data, self.members, self.device, self.use_graphs = data, list(members), device, use_graphs
        check_settings()
        self.inputs_in_graph = use_graphs and INPUTS == "graph"
        self.in_features = data.train.images[0].numel()
        if device.type == "cuda" and CUDNN_BENCHMARK:   # process-wide, as torch has it
            torch.backends.cudnn.benchmark = True
        self.amp = autocast(members[0].spec, device)
        self.models, self.batch_gens, self.dropout_gens = [], [], []
        with SHARED:                                        # the global RNG: no other lane seeds it meanwhile
            for m in members:
                gen = seed_everything(m.seed, device)       # exactly the serial run's start
                model = models.build(m.spec, self.in_features).to(device)
                self.models.append(model)
                self.batch_gens.append(gen)
                self.dropout_gens.append(_global_stream_copy(m.seed, device))
        self.template = self.models[0]
        self.mask_kinds = self._dropout_inputs()
        n = len(data.train)
        self.batch = members[0].spec.batch_size
        self.steps_per_epoch = math.ceil(n / self.batch)
        if max_batches:
            self.steps_per_epoch = min(self.steps_per_epoch, max_batches)
        self.alive = list(range(len(members)))          # member indices still training, in stack order
        state = {k: torch.stack([mod.state_dict()[k] for mod in self.models]) for k in self.template.state_dict()}
        trained = dict(self.template.named_parameters())
        self.shapes = {k: v.shape[1:] for k, v in state.items() if v.is_floating_point() and k in trained}
        # what the serial run's optimizer decays (penalties.penalised: dim >= 2) and what it does not
        self.weight_names = [k for k, shape in self.shapes.items() if len(shape) >= 2]
        self.other_names = [k for k in self.shapes if k not in self.weight_names]
        # All parameters of a member in one row of `flat` [k, P], optimizer state alike: the optimizer
        # update is a fused Adam/AdamW call per group of members (_update), not a dozen kernels per
        # tensor. self.params are views of it, shaped [k, ...] per tensor.
        self.flat = torch.cat([state[k].reshape(len(members), -1) for k in self.shapes], 1)
        self.params = self._views(self.flat)
        self.buffers = {k: v for k, v in state.items() if k not in self.shapes}
        self.slots = [torch.zeros_like(self.flat) for _ in range(2)]   # Adam m, v / SGD momentum buffer
        specs = [m.spec for m in members]
        per = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
        steps = max(x.epochs for x in specs) * self.steps_per_epoch
        schedules = {s: [lr_at(t, s.epochs * self.steps_per_epoch, s) for t in range(steps)]   # once per variant,
                     for s in set(specs)}                                                      # not per seed
        self.hyper = {
            "weight_decay": per([s.weight_decay for s in specs]),
            "l1": per([s.l1 if not s.l1_proximal else 0.0 for s in specs]),
            "l1_prox": per([s.l1 if s.l1_proximal else 0.0 for s in specs]),
            "l2": per([s.l2 for s in specs]),
            "smoothing": per([s.label_smoothing for s in specs]),
            "momentum": per([s.momentum for s in specs]),
            "lr_table": per([schedules[s] for s in specs]),
        }
        # members whose learning rates are the same at every step can share one fused update
        schedule_ids: dict[tuple, int] = {}
        self.schedule_of = [schedule_ids.setdefault(tuple(schedules[s]), len(schedule_ids)) for s in specs]
        self.adam_steps = torch.zeros(len(members), dtype=torch.float32, device=device)   # as fused Adam reads them
        self.step = torch.zeros((), dtype=torch.long, device=device)   # steps taken (the same for all)
        self.orders = None                                               # [k, n] batch orders of the epoch
        self.batch_index = torch.zeros((), dtype=torch.long, device=device)   # the epoch's next step
        self._cols = torch.arange(self.batch, device=device)
        self.loss_sum = torch.zeros(len(members), device=device)
        self.correct = torch.zeros(len(members), dtype=torch.long, device=device)
        self.sgd = specs[0].optimizer == "sgd"
        self.graphs: dict = {}                           # batch size -> replay of a step on copied-in inputs
        self.input_graphs: dict = {}                     # batch size -> graph of a step that makes its inputs
        self.graph_error = None                          # why capture failed, if it did (then eager)
        self.inputs_error = None                         # why capture with the inputs failed (then host)
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)  # where the wall time went (train())
        self._host = None                                # _host_records(), made when first needed
        self._refresh_flags()

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter tensor [k, ...] as a view of the rows of `flat` [k, P]."""
        views, start = {}, 0
        for name, shape in self.shapes.items():
            views[name] = flat[:, start:start + shape.numel()].view(len(flat), *shape)
            start += shape.numel()
        return views

    # -- the network, as functions of the stacked tensors --------------------------------------------

    def _dropout_inputs(self) -> dict[int, tuple]:
        """Dropout layer -> (dtype, features, attribute of the spec with its rate) of what it sees in
        the serial model (bf16 after an autocast Linear), so masks are drawn exactly as F.dropout
        draws them there on the CPU. (On CUDA, F.dropout runs torch's fused native_dropout kernel,
        which draws otherwise: there a member's masks come from its own stream, seeded as its serial
        run's, but are not its serial run's masks.)"""
        kinds, hooks, seen_weights = {}, [], False
        for i, layer in enumerate(self.template):
            seen_weights = seen_weights or isinstance(layer, (nn.Linear, nn.Conv2d))
            if isinstance(layer, nn.Dropout):
                rate = "dropout" if seen_weights else "input_dropout"

                def record(mod, args, i=i, rate=rate):
                    a = args[0]
                    fmt = torch.channels_last if a.dim() == 4 and not a.is_contiguous() else torch.contiguous_format
                    kinds[i] = (a.dtype, tuple(a.shape[1:]), rate, fmt)
                hooks.append(layer.register_forward_pre_hook(record))
        self.template.eval()
        side = math.isqrt(self.in_features)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            self.template(torch.zeros(2, 1, side, side, device=self.device).contiguous(memory_format=torch.channels_last))
        self.template.train()
        for h in hooks:
            h.remove()
        return kinds

    def forward(self, x: torch.Tensor, masks: dict | None = None, state: tuple | None = None) -> torch.Tensor:
        """Logits [k, B, 10] of every member. x is [k, B, pixels] (each member its own batch) or
        [N, pixels] (one batch shared by all members: evaluation). masks: Dropout layer -> scaled
        keep-masks in training; None evaluates (no dropout, running batch-norm statistics).

        Rows (MLP layers) are [k, B, features]: a Linear is a batched matrix multiply. Feature maps
        (CNN stages) are [B, k*C, H, W], member m owning channels m*C .. m*C+C-1: a Conv2d is a
        grouped convolution, and pooling, batch norm and ReLU act per channel, hence per member.
        `state` evaluates other stacked weights, (params, buffers), with the same code."""
        p, buf = state or (self.params, self.buffers)   # state: other stacked (params, buffers), e.g. finished members
        training, k, h = masks is not None, len(next(iter(p.values()))), x
        if isinstance(self.template[0], nn.Conv2d):           # pixels -> maps [B, k, 28, 28]
            side = math.isqrt(self.in_features)
            h = x.view(-1, 1, side, side).expand(-1, k, -1, -1) if x.dim() == 2 else \
                x.transpose(0, 1).reshape(-1, k, side, side)
            h = h.contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(self.template):
            w, b = p.get(f"{i}.weight"), p.get(f"{i}.bias")
            if isinstance(layer, nn.Linear):
                if h.dim() == 2:   # shared input: one matrix multiply for all members
                    flat = w.reshape(-1, w.shape[-1])
                    out = h @ flat.t() if b is None else torch.addmm(b.reshape(-1), h, flat.t())
                    h = out.view(len(h), k, -1).transpose(0, 1)
                else:
                    h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            elif isinstance(layer, nn.Conv2d) and CONV == "split":   # member j's channels, its own kernel
                h = torch.cat([F.conv2d(part, w[j], None if b is None else b[j], layer.stride, layer.padding,
                                        layer.dilation) for j, part in enumerate(h.split(h.shape[1] // k, 1))], 1)
            elif isinstance(layer, nn.Conv2d) and CONV == "unfold":
                h = conv_as_matmul(h, w, b, layer)
            elif isinstance(layer, nn.Conv2d):
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             layer.stride, layer.padding, layer.dilation, groups=k)
            elif isinstance(layer, nn.MaxPool2d):
                h = F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding)
            elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                rows = h.dim() == 3                             # [k, B, C] -> [B, k*C], as maps are
                flat = h.transpose(0, 1).reshape(h.shape[1], -1) if rows else h
                flat = F.batch_norm(flat, buf[f"{i}.running_mean"].view(-1), buf[f"{i}.running_var"].view(-1),
                                    w.reshape(-1), b.reshape(-1), training, layer.momentum, layer.eps)
                if training:
                    buf[f"{i}.num_batches_tracked"].add_(1)
                h = flat.view(h.shape[1], k, -1).transpose(0, 1) if rows else flat
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            elif isinstance(layer, nn.Dropout):
                if training:
                    h = h * masks[i]
            elif isinstance(layer, nn.Flatten):
                if h.dim() == 4:                                 # maps -> rows [k, B, C*H*W]
                    h = h.reshape(len(h), k, -1).transpose(0, 1)
            else:
                raise TypeError(f"the batched backend cannot stack {type(layer).__name__}")
        return h

    def objective(self, x: torch.Tensor, y: torch.Tensor, masks: dict, params: dict | None = None):
        """(sum over members of their losses, per-member loss [k], logits [k, B, 10]) of the stacked
        `params` (default self.params). The L1 and L2 penalties are not in it: gradients() adds
        their gradients in closed form."""
        hp, params = self.hyper, params or self.params
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.forward(x, masks, (params, self.buffers))
        log_p = logits.float().log_softmax(-1)
        loss = -log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        if self._any("smoothing"):                        # cross_entropy's label smoothing term
            eps = hp["smoothing"]
            loss = (1 - eps) * loss + eps * -log_p.mean(-1).mean(1)
        return loss.sum(), loss, logits

    def gradients(self, x: torch.Tensor, y: torch.Tensor, masks: dict):
        """(gradient [k, P] laid out as self.flat, per-member loss [k], logits [k, B, 10]) of each
        member's loss plus its penalties, l1 * sum|w| + l2 / 2 * sum w^2 over its weights (what the
        serial run adds, penalties.l1_penalty and l2_penalty). Their gradients, l1 * sign(w) and
        l2 * w, are added in place: 3 passes over the weights where autograd made ~24 (a pass over
        `regularization`'s 100 members' weights moves ~107 MB)."""
        leaves = {name: view.detach().requires_grad_() for name, view in self.params.items()}
        objective, loss, logits = self.objective(x, y, masks, leaves)
        grads = torch.autograd.grad(objective, list(leaves.values()))
        g = torch.cat([g.reshape(len(g), -1) for g in grads], 1)
        with torch.no_grad():
            for gw, w in zip(self._weights(self._views(g)), self._weights()):
                if self._any("l1"):
                    rows = self.rows_with["l1"]
                    gw[rows].addcmul_(w[rows].sign(), _per_member(self.hyper["l1"][rows], w))
                if self._any("l2"):
                    rows = self.rows_with["l2"]
                    gw[rows].addcmul_(w[rows], _per_member(self.hyper["l2"][rows], w))
        return g, loss, logits

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, masks: dict) -> None:
        """One step for every member: forward, per-member loss and penalties, gradients, optimizer
        update; metrics accumulate on the device. No host sync, so it can be one CUDA graph."""
        hp, at = self.hyper, self.step.view(1)
        lr = hp["lr_table"].index_select(1, at)                    # [k, 1]
        g, loss, logits = self.gradients(x, y, masks)
        with torch.no_grad():
            self._update(g, lr)
            self.step.add_(1)
            if self._any("l1_prox"):                               # soft threshold, weights only
                rows = self.rows_with["l1_prox"]
                thr = lr.squeeze(1)[rows] * hp["l1_prox"][rows]
                for w in self._weights():
                    soft_threshold_(w[rows], _per_member(thr, w))
            self.loss_sum.add_(loss.detach() * y.shape[1])
            self.correct.add_((logits.argmax(-1) == y).sum(1))

    def _any(self, name: str) -> bool:
        """Whether any member has this coefficient (read once per population, never inside a step)."""
        return self._flags[name]

    def _refresh_flags(self) -> None:
        groups: dict[tuple, list[int]] = {}
        for row, j in enumerate(self.alive):
            spec = self.members[j].spec
            decay = spec.weight_decay if spec.optimizer == "adamw" else 0.0   # SGD's is coupled (_update)
            groups.setdefault((self.schedule_of[j], decay), []).append(row)
        # stack rows that share a learning-rate schedule and an AdamW decay: one fused update each
        self.update_groups = [(rows, decay) for (_, decay), rows in groups.items()]
        # The rows a penalty, threshold or decay acts on: one slice where they are consecutive (members
        # are stacked by variant), else all rows (a coefficient of 0 changes nothing). Why: each such
        # term is a few passes over the weights, and in `regularization` a third of the members have it.
        nonzero = {k: (self.hyper[k] != 0).nonzero().flatten().tolist()
                   for k in ("l1", "l1_prox", "l2", "smoothing", "weight_decay")}
        self._flags = {k: bool(rows) for k, rows in nonzero.items()}
        self.rows_with = {k: slice(rows[0], rows[-1] + 1) if rows and rows == list(range(rows[0], rows[-1] + 1))
                          else slice(None) for k, rows in nonzero.items() if k != "smoothing"}   # smoothing: no pass

    def _weights(self, params: dict | None = None) -> list[torch.Tensor]:
        """The weights [k, out, in, ...] of stacked `params` (default self.params): what the serial
        run decays and penalises (its tensors of dim >= 2)."""
        params = params or self.params
        return [params[name] for name in self.weight_names]

    def _update(self, g: torch.Tensor, lr: torch.Tensor) -> None:
        """torch's Adam/AdamW (decoupled decay) or SGD with Nesterov momentum (coupled decay), as
        train.make_optimizer configures them, with a learning rate and decay per member ([k, 1]);
        only weights decay. Adam and AdamW are torch's fused kernels, as the serial run's
        (train.make_optimizer: fused=True), one call per group of members sharing a learning-rate
        schedule and AdamW decay: on each member's whole row where nothing decays, else on its
        weights (AdamW's kernel, its decay inside) and on its other parameters. One pass over the
        parameters, gradients and moments where the same update in separate tensor operations
        made about 20, and given the same gradients and fp32 learning rate the serial optimizer's
        numbers bit for bit. SGD's decay is added to the weights' gradients, each weight view in
        place (a [k, P] decay tensor would cost several passes over all parameters a step)."""
        p = self.flat
        if self.sgd:
            wd = self.hyper["weight_decay"] if self._any("weight_decay") else None
            buf = self.slots[0]
            if wd is not None:
                rows = self.rows_with["weight_decay"]
                for gw, w in zip(self._weights(self._views(g)), self._weights()):   # g is ours (gradients)
                    gw[rows].add_(_per_member(wd[rows], w) * w[rows])
            mom = self.hyper["momentum"].unsqueeze(1)
            buf.mul_(mom).add_(g)
            p.sub_(lr * (g + mom * buf))
            return
        m, v = self.slots
        adam = dict(beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], eps=ADAM_EPS, amsgrad=False, maximize=False)
        self.adam_steps.add_(1)
        for rows, decay in self.update_groups:
            at = lr[rows[0]].view(())
            if not decay:          # Adam, or AdamW without decay: the whole row at once
                torch._fused_adam_([p[r] for r in rows], [g[r] for r in rows], [m[r] for r in rows],
                                   [v[r] for r in rows], [], [self.adam_steps[r] for r in rows], lr=at,
                                   weight_decay=0.0, **adam)
                continue
            # AdamW as the serial run's two parameter groups: its weights decay inside torch's fused
            # AdamW kernel, the other parameters (biases, norms) do not
            steps = [self.adam_steps[r] for r in rows]
            views = [self.params, *(self._views(t) for t in (g, m, v))]
            for fused, names, wd in ((torch._fused_adamw_, self.weight_names, decay),
                                     (torch._fused_adam_, self.other_names, 0.0)):
                if names:
                    p_, g_, m_, v_ = ([t[n][r] for r in rows for n in names] for t in views)
                    fused(p_, g_, m_, v_, [], [s for s in steps for _ in names], lr=at, weight_decay=wd, **adam)

    # -- the loop ---------------------------------------------------------------------------------------

    def start_epoch(self) -> None:
        """Draw each live member's batch order for the next epoch from its own generator (as its
        serial run does), and zero the epoch's step counter and metrics."""
        n = len(self.data.train)
        orders = torch.stack([torch.randperm(n, device=self.device, generator=self.batch_gens[j]) for j in self.alive])
        if self.orders is None or self.orders.shape != orders.shape:
            self.orders = orders            # a new buffer only after _shrink, which drops the graphs reading it
        else:
            self.orders.copy_(orders)       # in place: captured steps read it
        self.batch_index.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()

    def _batch(self, orders: torch.Tensor, b: int):
        """Inputs [k, B, features], labels [k, B] and dropout masks of step b of `orders`."""
        return self._inputs(orders[:, b * self.batch:(b + 1) * self.batch])

    def _step_inputs(self, size: int):
        """The inputs of the epoch's next step, `size` rows per member: what _batch(self.orders, b)
        gives, with b read on the device (self.batch_index), so a CUDA graph can make them too."""
        return self._inputs(self.orders.index_select(1, self.batch_index * self.batch + self._cols[:size]))

    def _inputs(self, idx: torch.Tensor):
        """Inputs [k, B, features], labels [k, B] and dropout masks of the rows idx [k, B], each
        member's drawn from its own generators in the serial run's order."""
        specs = [self.members[j].spec for j in self.alive]
        x = train_inputs(self.data, idx, specs, [self.batch_gens[j] for j in self.alive])
        masks = {}
        for i, (dtype, shape, rate, fmt) in self.mask_kinds.items():   # in layer order, as the serial forward
            per_member = []
            for j, s in zip(self.alive, specs):
                keep = 1 - getattr(s, rate)   # F.dropout on the CPU: empty_like(input).bernoulli_(keep).div_(keep)
                per_member.append(torch.empty(idx.shape[1], *shape, dtype=dtype, device=self.device, memory_format=fmt)
                                  .bernoulli_(keep, generator=self.dropout_gens[j]).div_(keep))
            # rows [k, B, F]; maps [B, k*C, H, W]
            masks[i] = torch.stack(per_member) if len(shape) == 1 else \
                torch.stack(per_member, 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        return x, self.data.train.labels[idx], masks

    def _step(self, b: int) -> int:
        """Training step b of the epoch for every member; returns its rows per member. With the
        inputs in the graph one replay (the graph reads b from self.batch_index, which its replays
        advance); else the inputs made here from b, a view of the orders, then _run_step."""
        size = min(self.batch, len(self.data.train) - b * self.batch)
        if not self.inputs_in_graph:
            self._run_step(*self._batch(self.orders, b))
            return size
        if size not in self.input_graphs:
            try:
                self.input_graphs[size] = self._capture_with_inputs(size)
            except torch.cuda.OutOfMemoryError:
                raise                                   # fit_population splits the population
            except RuntimeError as err:                 # the inputs are then made on the host, and it says so
                self.inputs_in_graph, self.inputs_error = False, f"{type(err).__name__}: {str(err).splitlines()[0]}"
                self._drop_graphs()                     # holding SHARED, as every graph is let go
                print(f"  warning: CUDA graph capture with the step's inputs failed ({self.inputs_error}); "
                      "this population makes them on the host")
                return self._step(b)
        self.input_graphs[size].replay()
        return size

    def _run_step(self, x, y, masks) -> None:
        """One training step on ready inputs: on CUDA a graph replay with the inputs copied in."""
        if not self.use_graphs:
            self._train_step(x, y, masks)
            return
        size = x.shape[1]
        if size not in self.graphs:
            try:
                self.graphs[size] = self._capture(x, y, masks)
            except torch.cuda.OutOfMemoryError:
                raise                                   # fit_population splits the population
            except RuntimeError as err:                 # the step still runs, eagerly, and says so
                self.use_graphs, self.graph_error = False, f"{type(err).__name__}: {str(err).splitlines()[0]}"
                print(f"  warning: CUDA graph capture failed ({self.graph_error}); this population runs eagerly")
                self._train_step(x, y, masks)
                return
        self.graphs[size](x, y, masks)

    def _state(self) -> list[torch.Tensor]:
        return [self.flat, *self.buffers.values(), *self.slots, self.adam_steps, self.step, self.loss_sum,
                self.correct, self.batch_index]

    def _step_generators(self) -> list[torch.Generator]:
        """The generators a step draws from: each live member's batch generator where it augments,
        its dropout generator where the network has dropout. Only these are registered with a graph
        (each costs the host two small launches a replay)."""
        drawn = [self.batch_gens[j] for j in self.alive if self.members[j].spec.augment != "none"]
        return drawn + ([self.dropout_gens[j] for j in self.alive] if self.mask_kinds else [])

    def _warm_up(self, step, gens: list[torch.Generator] = ()) -> None:
        """Run `step` three times, as capture needs, then put back every tensor of the state and
        every generator in `gens`: the warm-up changes nothing. Each run starts from the first
        step of an epoch, so no learning-rate table or batch index runs past its end, wherever in
        training the capture happens (the last batch of the last epoch included)."""
        saved, drawn = [t.detach().clone() for t in self._state()], [g.get_state() for g in gens]
        try:
            for _ in range(3):
                self.step.zero_()
                self.batch_index.zero_()
                step()
        finally:
            with torch.no_grad():
                for t, s in zip(self._state(), saved):
                    t.copy_(s)
            for g, state in zip(gens, drawn):
                g.set_state(state)

    def _graph_of(self, step, gens: list[torch.Generator] = ()) -> torch.cuda.CUDAGraph:
        """`step` warmed up on a side stream and captured as a CUDA graph, with `gens` registered
        (a replay then advances each by the graph's draws, so replays draw what eager steps would).
        A capture that fails leaves no generator in capture mode and the stream as it was (torch
        2.11 would otherwise refuse every later draw and capture), then raises. One lane captures at
        a time (SHARED); the others go on replaying and evaluating meanwhile (thread-local capture
        mode: only this thread's CUDA calls must be capture-safe)."""
        with self._phase("steps.capture"), SHARED:
            return self._captured(step, gens)

    def _captured(self, step, gens) -> torch.cuda.CUDAGraph:
        """_graph_of's work (it times it as `steps.capture`). In a lane (lanes.py: this thread's
        current stream is its own, not the default stream) the warm-up and the capture run on that
        stream: torch hands out streams from a pool of 32, so a new side stream or torch.cuda.graph's
        shared capture stream could be another lane's, whose work would then be captured into this
        graph. There the capture also skips torch.cuda.graph's device-wide synchronize and
        empty_cache, which would stall every lane and drop their cached memory."""
        current = torch.cuda.current_stream(self.device)
        in_lane = current != torch.cuda.default_stream(self.device)
        default = torch.cuda.default_generators[self.device.index if self.device.index is not None
                                                else torch.cuda.current_device()]
        states = [(g, g.get_state()) for g in [default, *gens]]
        stream = current if in_lane else torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                self._warm_up(step, gens)
        finally:                                          # its state restore too, before anything else reads it
            current.wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            if hasattr(graph, "register_generator_state"):   # torch 2.14 registers on first use (a no-op there)
                for g in gens:
                    graph.register_generator_state(g)
            if in_lane:
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    step()
                finally:
                    graph.capture_end()
            else:
                with torch.cuda.graph(graph):
                    step()
        except RuntimeError:
            _FAILED_GRAPHS.append(graph)                 # torch's allocator may still point at it
            torch.cuda.set_stream(current)
            for g, state in states:                       # a fresh state object: out of capture mode
                fresh = torch.Generator(device=self.device)
                fresh.set_state(state)
                if hasattr(g, "graphsafe_set_state"):
                    g.graphsafe_set_state(fresh)
            raise
        if in_lane:                                       # the warm-up's work counts as the capture's
            current.synchronize()
        else:
            torch.cuda.synchronize(self.device)
        return graph

    def _capture_with_inputs(self, size: int) -> torch.cuda.CUDAGraph:
        """The epoch's next step, its inputs made inside, as a CUDA graph."""
        def step():
            self._train_step(*self._step_inputs(size))
            self.batch_index.add_(1)
        return self._graph_of(step, self._step_generators())

    def _capture(self, x, y, masks):
        """One training step of this batch size as a CUDA graph on static inputs; returns
        replay(x, y, masks), which copies a step's inputs in and replays it."""
        static_x, static_y = x.clone(), y.clone()
        static_masks = {i: m.clone() for i, m in masks.items()}
        graph = self._graph_of(lambda: self._train_step(static_x, static_y, static_masks))

        def replay(x, y, masks) -> None:
            static_x.copy_(x)
            static_y.copy_(y)
            for i, mask in masks.items():
                static_masks[i].copy_(mask)
            graph.replay()
        return replay

    @torch.no_grad()
    def _evaluate(self, split, views: tuple = SINGLE_VIEW, stacked: dict | None = None):
        """What train.evaluate gives each member's model on a whole split, for all members in one
        forward pass per batch and view: (mean losses, accuracies, predictions [m, N]); one host
        sync. The members are the live population, or the m whose state dicts stacked_states()
        stacked into `stacked` (key -> [m, ...]). The prediction is the mean of the views' softmax
        outputs and the loss is that mean's."""
        state = None
        if stacked is not None:
            state = ({key: v for key, v in stacked.items() if key in self.params},
                     {key: v for key, v in stacked.items() if key not in self.params})
        m = len(next(iter(stacked.values()))) if stacked is not None else len(self.alive)
        loss_sum, preds = torch.zeros(m, device=self.device), []
        for start in range(0, len(split), EVAL_BATCH):
            x = inputs(split.images[start:start + EVAL_BATCH], self.data)
            y = split.labels[start:start + EVAL_BATCH]
            log_mean = mean_over_views(lambda view: self.forward(view.reshape(len(view), -1), state=state),
                                       x, views, self.amp)   # [m, B, 10]
            loss_sum += -log_mean.gather(-1, y.expand(m, -1).unsqueeze(-1)).squeeze(-1).sum(1)
            preds.append(log_mean.argmax(-1))
        preds = torch.cat(preds, 1)
        return (loss_sum / len(split)).tolist(), (preds == split.labels).float().mean(1).tolist(), preds

    def _finish(self, finishing: list[tuple], finished) -> None:
        """Finish the members that stopped this epoch, [(member index, state, diverged, seconds)]:
        the ones with the same test-time views are evaluated together, then each is finished as a
        serial run is; finished([(member index, run), ...]) then gets them all at once."""
        by_views: dict[tuple, list] = {}
        runs = []
        for j, state, diverged, seconds in finishing:
            if diverged:
                runs.append((j, run_record(self.models[j], self.data, self.track[j]["history"], seconds, None)))
                continue
            views = SHIFTED_VIEWS if self.members[j].spec.test_time_shifts else SINGLE_VIEW
            by_views.setdefault(views, []).append((j, state, seconds))
        for views, group in by_views.items():
            evaluated, stacked = [{} for _ in group], stacked_states([st for _, st, _ in group])
            with self._phase("finish.evaluate"):
                for split in ("train", "val", "test"):
                    losses, accs, preds = self._evaluate(getattr(self.data, split), views, stacked)
                    for e, loss, acc, pred in zip(evaluated, losses, accs, preds):
                        e[split] = (loss, acc, pred)
            with self._phase("finish.records"):
                # each member's final weights and test predictions copied to the host at once, where
                # run_record reads them a number at a time (on CUDA ~65 syncs a run where it read them
                # from the device; on the CPU the same numbers either way)
                model, data = self._host_records()
                states = {k: v.cpu() for k, v in stacked.items()}
                test_preds = torch.stack([e["test"][2] for e in evaluated]).cpu()
                for row, ((j, _, seconds), e) in enumerate(zip(group, evaluated)):
                    model.load_state_dict({k: v[row] for k, v in states.items()})
                    e["test"] = (*e["test"][:2], test_preds[row])
                    runs.append((j, run_record(model, data, self.track[j]["history"], seconds, e)))
        if runs:
            with self._phase("finish.save"):
                finished(runs)

    def _host_records(self) -> tuple[nn.Module, FashionMNIST]:
        """A copy of the members' network on the CPU and the data with its test split there (the
        split run_record reads): where finished members get their records."""
        if self._host is None:
            test = Split(self.data.test.images.cpu(), self.data.test.labels.cpu())
            self._host = (copy.deepcopy(self.template).cpu(), dataclasses.replace(self.data, test=test))
        return self._host

    def member_state(self, row: int) -> dict:
        """The state dict of the member at stack row `row`, for its plain module."""
        return {k: v[row].detach().clone() for k, v in {**self.params, **self.buffers}.items()}

    def train(self, finished) -> None:
        """Train every member to its end, calling finished([(member index, run), ...]) with the
        members that end in each epoch.
        self.phase_seconds then holds where the wall time went: training steps (CUDA graph
        captures included), the per-epoch evaluation, and finishing members (each phase ends at a
        host sync, so GPU work is counted in the phase that queued it). Parts are timed apart too
        (they are in their phase, not beside it): the CUDA-graph captures of `steps`, and of
        `finish` the final evaluation of the members that end, their records (run_record:
        confusion, misclassified, weight statistics) and the caller's `finished` (saving them)."""
        self.phase_seconds = dict.fromkeys(PHASES, 0.0)
        self.track = track = {j: {"history": [], "best": math.inf, "best_state": None, "bad": 0,
                                  "started": time.perf_counter()} for j in self.alive}
        epoch = 0
        while self.alive:
            epoch += 1
            epoch_start = time.perf_counter()
            with self._phase("steps"):
                self.start_epoch()
                seen = sum(self._step(b) for b in range(self.steps_per_epoch))
                train_loss = (self.loss_sum / seen).tolist()
                train_acc = (self.correct.double() / seen).tolist()
            with self._phase("evaluate"):
                val_loss, val_acc, _ = self._evaluate(self.data.val)
                test_loss, test_acc, _ = self._evaluate(self.data.test)
            seconds = time.perf_counter() - epoch_start
            with self._phase("finish"):
                done, finishing = [], []
                for row, j in enumerate(self.alive):
                    spec, tr = self.members[j].spec, track[j]
                    last_lr = lr_at(epoch * self.steps_per_epoch - 1, spec.epochs * self.steps_per_epoch, spec)
                    tr["history"].append({"epoch": epoch, "train_loss": train_loss[row], "train_acc": train_acc[row],
                                          "val_loss": val_loss[row], "val_acc": val_acc[row],
                                          "test_loss": test_loss[row], "test_acc": test_acc[row],
                                          "lr": last_lr, "seconds": seconds})
                    stop = diverged = not (math.isfinite(train_loss[row]) and math.isfinite(val_loss[row]))
                    if not diverged:
                        if val_loss[row] < tr["best"]:          # early stopping on validation loss only
                            tr["best"], tr["bad"] = val_loss[row], 0
                            if spec.patience:
                                tr["best_state"] = self.member_state(row)
                        elif spec.patience:
                            tr["bad"] += 1
                            stop = tr["bad"] >= spec.patience
                        stop = stop or epoch == spec.epochs
                    if stop:
                        done.append(row)
                        finishing.append((j, tr["best_state"] or self.member_state(row), diverged,
                                          time.perf_counter() - tr["started"]))
                self._finish(finishing, finished)
                if done:
                    self._shrink([r for r in range(len(self.alive)) if r not in done])
        self._drop_graphs()

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Add the block's wall time to phase_seconds[name], and mark it as the profiler range
        `fmreport.<name>`, so a torch.profiler trace (gpu_probe's `profiles`) says how much of the
        phase was the device's work and how much the host's."""
        started = time.perf_counter()
        try:
            with torch.profiler.record_function(f"fmreport.{name}"):
                yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - started

    def _shrink(self, keep_rows: list[int]) -> None:
        """Drop finished members from every stacked tensor; the CUDA graphs are captured again."""
        self.alive = [self.alive[r] for r in keep_rows]
        if not self.alive:
            return
        rows = torch.tensor(keep_rows, device=self.device)
        self.flat = self.flat.index_select(0, rows)
        self.params = self._views(self.flat)
        self.buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}
        self.slots = [s.index_select(0, rows) for s in self.slots]
        self.adam_steps = self.adam_steps.index_select(0, rows)
        self.hyper = {k: v.index_select(0, rows) for k, v in self.hyper.items()}
        self.loss_sum, self.correct = self.loss_sum[rows], self.correct[rows]
        self.orders = None
        self._refresh_flags()
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        """Let go of the captured graphs, holding SHARED: torch 2.11 registers every graph with the
        default CUDA generator and unregisters it, without a lock, when the graph is destroyed,
        which must not overlap another lane's capture."""
        with SHARED:
            self.graphs.clear()
            self.input_graphs.clear()


def stacked_states(states: list[dict]) -> dict[str, torch.Tensor]:
    """Members' state dicts as one: key -> [m, ...] (what StackedRun._evaluate takes)."""
    return {key: torch.stack([st[key] for st in states]) for key in states[0]}


def conv_as_matmul(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, layer: nn.Conv2d) -> torch.Tensor:
    """What the grouped convolution of the maps h [B, k*C, H, W] with member j's kernel w[j] [O, C, kh,
    kw] on its channels gives, [B, k*O, H', W'], as one batched matrix multiply over the members:
    kernels [k, O, C*kh*kw] times im2col columns [k, C*kh*kw, B*H'*W']. The columns are one copy of
    Tensor.unfold's sliding-window view (F.unfold would launch a kernel per image on CUDA)."""
    if layer.dilation != (1, 1) or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError("FMREPORT_CONV=unfold takes convolutions with zero padding and no dilation; "
                         "use FMREPORT_CONV=split for this network")
    k, out_channels = w.shape[:2]
    (ph, pw), (kh, kw), (sh, sw) = layer.padding, layer.kernel_size, layer.stride
    windows = F.pad(h, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)   # [B, k*C, H', W', kh, kw]
    n, _, ho, wo = windows.shape[:4]
    cols = windows.reshape(n, k, -1, ho, wo, kh, kw).permute(1, 2, 5, 6, 0, 3, 4).reshape(k, -1, n * ho * wo)
    out = _ConvMatmul.apply(w.reshape(k, out_channels, -1), cols, None if b is None else b.unsqueeze(-1))
    return out.view(k, out_channels, n, ho, wo).permute(2, 0, 1, 3, 4).reshape(n, k * out_channels, ho, wo)


class _ConvMatmul(torch.autograd.Function):
    """kernels [k, O, D] @ columns [k, D, N] (+ bias [k, O, 1]), forward and backward, at the
    precision of cuDNN's convolutions (torch.backends.cudnn.allow_tf32: TF32 on CUDA by torch's
    default), so that FMREPORT_CONV=unfold computes what `split` and `grouped` do at their precision,
    whatever FMREPORT_MATMUL says for the Linear layers. (Under bf16 autocast the forward's matrix
    multiply runs in bf16 and the backward's take its operands in the gradient's dtype, as autograd
    would.)"""

    @staticmethod
    def forward(ctx, kernels, cols, bias):
        ctx.save_for_backward(kernels, cols)
        ctx.has_bias = bias is not None
        with cuda_matmul(cols.device, "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"):
            return torch.bmm(kernels, cols) if bias is None else torch.baddbmm(bias, kernels, cols)

    @staticmethod
    def backward(ctx, grad):
        kernels, cols = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_kernels = grad_cols = grad_bias = None
        with cuda_matmul(grad.device, "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"):
            if ctx.needs_input_grad[0]:
                grad_kernels = torch.bmm(grad, cols.transpose(1, 2))
            if ctx.needs_input_grad[1]:
                grad_cols = torch.bmm(kernels.transpose(1, 2), grad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(2, keepdim=True)
        return grad_kernels, grad_cols, grad_bias


def train_inputs(data: FashionMNIST, idx: torch.Tensor, specs: list[RunSpec], gens: list) -> torch.Tensor:
    """Training inputs [k, B, pixels] of k members, member r's batch idx[r] augmented as its spec
    says with draws from its generator gens[r]: bit for bit what data.make_inputs gives each member
    alone, but resampled in one grid_sample per group (crop / shift or flip) instead of one per
    member. Why: on a GPU the per-member calls cost more than the training step."""
    k, n = idx.shape
    x = data.train.images[idx.reshape(-1)].unsqueeze(1).float().div_(255)      # as make_inputs
    side = x.shape[-1]
    maps = x.view(k, n, 1, side, side)
    for group in ([r for r, s in enumerate(specs) if "crop" in s.augment],
                  [r for r, s in enumerate(specs) if s.augment != "none" and "crop" not in s.augment]):
        if group:
            boxes, flips = _augment_draws([specs[r] for r in group], [gens[r] for r in group], n, side, x.device)
            rows = _rows(tuple(group), x.device)
            maps[rows] = crop_resize_flip(maps[rows].flatten(0, 1), boxes, flips).view(len(group), n, 1, side, side)
    return x.sub_(data.mean).div_(data.std).view(k, n, -1)


def _rows(group: tuple[int, ...], device: torch.device):
    """Stack rows `group` as an index: a slice where they are consecutive (members are stacked by
    variant, so they usually are), else an index tensor made once. Why: a tensor made from a list
    each step is a host-to-device copy, and such a copy waits for every kernel queued before it,
    so the CPU could no longer prepare the next step while the GPU runs this one. The tensors are
    kept for the process, never evicted or replaced: a captured step reads its index tensor at
    every replay, and lanes may share one."""
    if group == tuple(range(group[0], group[-1] + 1)):
        return slice(group[0], group[-1] + 1)
    with _ROW_INDEXES_LOCK:
        if (group, device) not in _ROW_INDEXES:
            _ROW_INDEXES[group, device] = torch.tensor(group, device=device)
        return _ROW_INDEXES[group, device]


_ROW_INDEXES: dict = {}
_ROW_INDEXES_LOCK = threading.Lock()


def soft_threshold_(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """penalties.soft_threshold_ with a threshold per member (t broadcasts over w): w - clamp(w, -t,
    t) is sign(w) * max(|w| - t, 0), the same values (a zero is +0 here), in 2 passes over the
    weights instead of 6."""
    return w.sub_(torch.clamp(w, -t, t))


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-member values [k] shaped to broadcast over a stacked tensor [k, ...] (a CNN's weights
    have five dimensions, an MLP's three)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _augment_draws(specs: list[RunSpec], gens: list, n: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [m*n, 4] and flips [m*n] of m members that all crop or none of which crops. Each member
    draws from its own generator exactly what data.make_inputs draws, in its order (crop: areas,
    aspect ratios, positions; or shift offsets; then flips); the boxes are then computed for all
    members at once by data.crop_boxes, the arithmetic of data.random_resized_crop_boxes."""
    crop, area, log_r, pos, corner, flips = "crop" in specs[0].augment, [], [], [], [], []
    for s, g in zip(specs, gens):
        if crop:
            area.append(torch.empty(n, 10, device=device).uniform_(*s.crop_scale, generator=g))
            log_r.append(torch.empty(n, 10, device=device).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g))
            pos.append(torch.rand(n, 2, device=device, generator=g))
        elif "shift" in s.augment:
            corner.append(torch.randint(-s.max_shift, s.max_shift + 1, (n, 2), device=device, generator=g).float())
        else:
            corner.append(torch.zeros(n, 2, device=device))
        flips.append(torch.rand(n, device=device, generator=g) < 0.5 if "flip" in s.augment
                     else torch.zeros(n, dtype=torch.bool, device=device))
    if not crop:
        sides = torch.full((len(specs) * n, 2), float(size), device=device)
        return torch.cat([torch.cat(corner), sides], 1), torch.cat(flips)
    return crop_boxes(torch.cat(area), torch.cat(log_r), torch.cat(pos), size), torch.cat(flips)


def _global_stream_copy(seed: int, device: torch.device) -> torch.Generator:
    """A generator in the state of the global stream right now (after the member's model was built
    under manual_seed(seed)): the stream from which its serial run draws dropout masks (on CUDA with
    another kernel: _dropout_inputs)."""
    if device.type == "cpu":
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        return gen
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)         # building on the CPU leaves the device's default stream at its seed
    return gen
