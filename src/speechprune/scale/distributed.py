"""Data parallelism under torchrun for the training loops (pruning recovery, ``speechprune train``).

``torchrun --nproc_per_node N -m speechprune prune ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and the rendezvous in the environment; :func:`data_parallel` joins them into one process group
(gloo on the CPU, nccl on GPUs) and returns who this process is. Every rank builds the same model from the same
files and seed, so the replicas start equal and stay equal: each optimizer step reads one **global batch** of
``accumulate`` sub-batches (the recipe's ``batch_size`` clips each), rank ``r`` runs the forward and backward of
sub-batches ``r, r + N, ...`` of it with each loss scaled by ``1 / accumulate``, :meth:`DataParallel.reduce` sums
the gradients (and the loss) over the ranks in one all-reduce, and every rank takes the same optimizer step. The
update is the single-process update over the same global batch (gradient accumulation over its sub-batches), up to
the order of float additions, so loss curves agree across world sizes and a checkpoint resumes under any of them
(the batch order is a function of the seed and the step only). ``N`` must divide ``accumulate``.

Why not the ``DistributedDataParallel`` wrapper: the families' training forwards reach into their models'
sub-modules (Whisper's encoder graph, the decoder called with precomputed encoder states), which the wrapper does not
see, and its gradient averaging assumes one equal share per rank. One explicit all-reduce after the backward passes
is the same collective, and exact.

Only rank 0 writes (checkpoints, model folders, records); the others only compute (the next all-reduce keeps them in
step, and torchrun waits for every process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the job: ``rank`` of ``world`` (1 when not started by torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs."""
        return self.rank == 0

    def shares(self, n: int) -> range:
        """The positions (of ``n`` sub-batches per step) this rank computes."""
        if n % self.world:
            raise ConfigError(f"the world size {self.world} does not divide the global batch of {n} sub-batches "
                              f"(recovery.accumulate / accumulate in the recipe)")
        return range(self.rank, n, self.world)

    def backward(self, params, n: int, loss_of) -> float:
        """The backward passes of one optimizer step over a global batch of ``n`` sub-batches: ``loss_of(j)`` is the
        loss of sub-batch ``j``; this process runs its share, each loss scaled by ``1 / n``, then the gradients of
        ``params`` and the loss are summed over the processes. Returns the step's loss (the mean over the ``n``)."""
        total = 0.0
        for j in self.shares(n):
            loss = loss_of(j) / n
            loss.backward()
            total += float(loss.detach())
        return self.reduce(params, total)

    def reduce(self, params, loss: float) -> float:
        """Sum the gradients of ``params`` and the scalar ``loss`` over the ranks (a no-op alone); returns the sum."""
        if self.world == 1:
            return loss
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")
        flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss], dtype=grads[0].dtype if grads
                                                                         else torch.float32, device=device)])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        return float(flat[-1])


def data_parallel(device: str = "cpu") -> DataParallel:
    """This process's :class:`DataParallel`: from torchrun's environment (the process group is created once, gloo
    for the CPU and nccl for CUDA), or rank 0 of 1 without it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DataParallel()
    import torch.distributed as dist

    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError("WORLD_SIZE is set but no rendezvous (MASTER_ADDR): start the command with torchrun")
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DataParallel(dist.get_rank(), dist.get_world_size())


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or not under torchrun)."""
    return int(os.environ.get("RANK", "0") or 0) == 0
