"""`--executor ray`: one Ray task per (variant, seed), results handed back as each task finishes.

Ray is optional (pyproject's [cluster] extra) and imported only here, only when asked for. The
driver keeps the progress file and writes the result; tasks only train. Every node needs the
repo, the venv and the data: a task loads the data itself (about 1 s, once per worker process)
because shipping the tensors with every task would cost more.
"""
from __future__ import annotations

import os
import platform
import socket

INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install -e '.[cluster]'"
# A task whose worker dies (kill -9, the OOM killer, a lost node) reruns from its seed, which gives
# the same run; set here rather than relying on Ray's default.
RETRIES = 3


class RayError(Exception):
    """The Ray cluster cannot run this sweep; the message says why."""


def require_ray():
    """Import ray, or raise ValueError with the one-line install hint (the CLI's exit 2); then
    check $RAY_ADDRESS, so that the CLI's check before any work also catches a dead cluster."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    check_reachable(os.environ.get("RAY_ADDRESS"))
    return ray


def check_reachable(address: str | None, timeout: float = 3.0) -> None:
    """Raise RayError at once when nothing listens at a host:port or ray://host:port address
    (ray.init would retry it for minutes); other forms (auto, local) are Ray's to resolve."""
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if not host or "://" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayError(f"no Ray cluster answers at RAY_ADDRESS={address} ({err}); start the cluster with "
                       "`ray start --head` or unset RAY_ADDRESS for a local Ray instance") from None


_DATA = {}   # per worker process: (device, quick) -> data, so a reused worker loads once


def train_one(spec, seed: int, device: str, threads: int, quick: bool, plan: tuple, matmul: str | None = None) -> dict:
    """The Ray task: train one run with `threads` torch threads (the serial run's count, so the
    float sums and hence the histories are bit-identical to it), on CUDA with the driver's fp32
    matrix-multiply setting `matmul` (stacked.cuda_matmul)."""
    from .train import fit   # first: train sets the denormal flush before torch starts its threads
    import torch
    from . import data as data_mod, planning, results, stacked
    *args, fp = plan
    if results.fingerprint(*args) != fp:   # a node with other engine code would mislabel its result
        raise RayError(f"node {platform.node()} has different engine code than the driver; "
                       "check out the same commit on every node")
    torch.set_num_threads(threads)
    # Flushing denormals is a per-thread mode and Ray may run a task on another thread than the
    # one that imported train: without this, a run can differ from the serial one in the last bit.
    torch.set_flush_denormal(True)
    if (device, quick) not in _DATA:
        data = data_mod.load(device)
        _DATA[device, quick] = data.subset(planning.QUICK_TRAIN, planning.QUICK_EVAL) if quick else data
    with stacked.cuda_matmul(torch.device(device), matmul):
        return fit(_DATA[device, quick], spec, seed, torch.device(device))


def run_on_ray(todo: list, device, threads: int, quick: bool, plan: tuple, log=print, matmul: str | None = None):
    """Yield (variant, seed, run) for each (variant, spec, seed) of `todo` as its task finishes.

    Connects to $RAY_ADDRESS (`ray://host:10001`, `auto`) or starts a local Ray instance."""
    ray = require_ray()
    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except Exception as err:   # Ray raises many kinds (ConnectionError, RuntimeError, ...): one line for all
            raise RayError(f"Ray could not start or connect ({'RAY_ADDRESS=' + address if address else 'a local instance'}): "
                           f"{_first_line(err)}; a ray://... address needs pip install 'ray[client]'") from None
    nodes = [n for n in ray.nodes() if n["Alive"]]
    biggest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    if biggest < threads:   # Ray would wait forever for a node that big
        raise RayError(f"each run asks for {threads} CPUs but the largest Ray node has {biggest:g}; "
                       f"pass --threads {int(biggest) or 1} (results are bit-identical only at equal thread counts)")
    task = ray.remote(train_one).options(num_cpus=threads, num_gpus=1 if device.type == "cuda" else 0,
                                         max_retries=RETRIES)
    pending = {task.remote(spec, seed, str(device), threads, quick, plan, matmul): (name, seed)
               for name, spec, seed in todo}
    log(f"ray: {len(pending)} task(s) of {threads} CPU(s) each on {len(nodes)} node(s) "
        f"with {ray.cluster_resources().get('CPU', 0):g} CPUs")
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(ref)
        try:
            run = ray.get(ref)
        except Exception as err:   # its worker died more often than it is retried, or the task raised
            raise RayError(f"{name} seed {seed} failed on Ray ({type(err).__name__}: {_first_line(err)}); the runs "
                           "finished so far are kept: run the same command again to resume") from None
        yield name, seed, run


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
