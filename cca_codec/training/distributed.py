"""Data-parallel training under torchrun: DistributedDataParallel, NCCL on GPUs, gloo on CPUs.

    torchrun --nproc-per-node 8 -m cca_codec.training.train --data data_pack --out runs/r1 --batch 64 ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them (or with
WORLD_SIZE=1) training is one plain process and every method here is a no-op.

One global batch, sharded. `--batch` is the global batch B; with N ranks (B divisible by N), rank
r trains on rows [r*B/N, (r+1)*B/N) of it. Every random draw of a step (crop choices and flips,
qualities, the context mode, the additive quantisation noise) is made for all B rows from
generators that every rank holds in the same state (seeded from --seed, advanced identically),
and each rank keeps its own rows: it cuts, runs and back-propagates only its own crops. DDP
averages the gradients of the shard means, which is the gradient of the mean over the global
batch, so N ranks compute what one process with batch B computes, up to float summation order.
What every rank repeats is only the drawing of random numbers for the whole batch (B crop
positions, and uniform noise the size of the latents).

Hence the generator streams are one stream, not one per rank: every rank's generator state is
the same (checked at every save), the state file holds that one state, and a run resumes with any
N that divides B, drawing exactly the batches it would have drawn with the old N.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cca_codec.base.errors import UsageError
from cca_codec.core.device import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and its training device."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes state, logs and exports."""
        return self.rank == 0

    def describe(self, device_name: str) -> str:
        return f"{self.size} x {device_name}" if self.distributed else device_name

    def shard(self, batch: int) -> slice:
        """This rank's rows of a global batch."""
        if batch % self.size:
            raise UsageError(f"--batch {batch} is the global batch: it must divide by the {self.size} processes")
        n = batch // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    # -- the parts of a step that differ from one process ----------------------------------

    def wrap(self, module: nn.Module, ignore: Iterable[str] = ()) -> nn.Module:
        """`module` under DDP (gradients averaged during backward), leaving the parameters named in
        `ignore` to `average_gradients`. Unused parameters are allowed: the checkerboard context
        sits out steps in grouped mode."""
        if not self.distributed:
            return module
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
        # no buffer changes during training: no buffer broadcast before every forward
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        return DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=True,
            **no_buffer_sync,
        )

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Average the gradients of parameters outside DDP (the quantiles' own optimiser)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not self.distributed or not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.size
        for g, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(averaged)

    def mean(self, values: Tensor) -> Tensor:
        """The mean over ranks of per-rank values (shard means -> global-batch means)."""
        if not self.distributed:
            return values
        values = values.detach().clone()
        dist.all_reduce(values)
        return values / self.size

    def agree(self, stop: bool, seconds: float, cpu_seconds: float) -> tuple[bool, float, float]:
        """One collective per step for the decisions every rank must take alike: stop when any rank
        was signalled; time is rank 0's wall clock; CPU time is the sum over ranks."""
        if not self.distributed:
            return stop, seconds, cpu_seconds
        t = torch.tensor([float(stop), seconds if self.main else 0.0, cpu_seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        any_stop, seconds, cpu_seconds = t.tolist()
        return any_stop > 0, seconds, cpu_seconds

    def check_replicas(self, fingerprint: Tensor) -> None:
        """Raise on every rank unless all ranks hold the same `fingerprint` (weights, step and
        generator states): what rank 0 saves must be every rank's state."""
        fingerprint = fingerprint.to(self.device)
        gathered = [torch.empty_like(fingerprint) for _ in range(self.size)]
        dist.all_gather(gathered, fingerprint)
        differ = [r for r, f in enumerate(gathered) if not torch.equal(f, gathered[0])]
        if differ:
            raise RuntimeError(f"ranks {differ} have diverged from rank 0 (weights, step or random state differ)")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # -- the quantisation noise of the global batch -----------------------------------------

    def shard_noise(self, module: nn.Module) -> None:
        """Make the training noise of every entropy model in `module` this rank's rows of the noise
        one process would draw for the global batch."""
        if not self.distributed:
            return
        from compressai.entropy_models import EntropyBottleneck, EntropyModel  # training only

        for m in module.modules():
            if isinstance(m, EntropyModel):
                # EntropyBottleneck quantises (C, 1, B*h*w): the batch is the last dimension there
                batch_dim = -1 if isinstance(m, EntropyBottleneck) else 0
                m.quantize = functools.partial(_quantize_sharded, m, self, batch_dim)

    def global_uniform(self, local: Tensor, batch_dim: int = 0) -> Tensor:
        """This rank's block of U(-0.5, 0.5) noise drawn for the global batch: the draw has the shape
        of `local` with `batch_dim` N times longer, and the memory layout `empty_like(local)` has,
        which is what `empty_like` gives one process for the whole batch; so this rank's block
        holds exactly the values that process would draw for these rows."""
        probe = torch.empty_like(local)
        dim = batch_dim % local.dim()
        order = sorted(range(local.dim()), key=lambda d: -probe.stride(d))  # outermost first (stable)
        shape = list(local.shape)
        rows = shape[dim]
        shape[dim] *= self.size
        full = torch.empty([shape[d] for d in order], dtype=probe.dtype, device=probe.device)
        full = full.permute(*[order.index(d) for d in range(local.dim())]).uniform_(-0.5, 0.5)
        return full.narrow(dim, self.rank * rows, rows)


def _quantize_sharded(model: nn.Module, world: World, batch_dim: int, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
    """compressai's `EntropyModel.quantize`, with the "noise" mode's draw taken from the global batch
    (compressai: inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5))."""
    if mode != "noise":
        return type(model).quantize(model, inputs, mode, means)
    return inputs + world.global_uniform(inputs, batch_dim)


@contextmanager
def launch(device_option: str) -> Iterator[World]:
    """The world this process trains in: from torchrun's environment variables (setting up the
    process group, and tearing it down afterwards), else a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or size == 1:
        yield World(resolve_device(device_option, any_device=True))
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_option, local_rank, any_device=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield World(device, rank, size)
    finally:
        dist.destroy_process_group()
