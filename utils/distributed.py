"""Training over the K processes `torchrun` starts (one per GPU), giving the run one process gives.

What is split: the per-sample networks (DADH's generator, AGAH's nets), each rank running its
share of every global batch under DistributedDataParallel, with BatchNorm over the global batch.
What is not: everything batch-wide. Every rank gathers the outputs of the whole global batch
(`gather_rows`, gradients flowing back to each rank's own rows) and computes the single-process
losses, discriminator steps and code buffers from them, identically. So every rank holds the same
loss L; the gradient it sends back to its rows is that slice of ∂L, times K because DDP divides the
summed parameter gradients by K. That holds for every term alike, sums and means, since the terms
are the single-process ones over the global batch.

One process (no torchrun, or WORLD_SIZE 1) gets SOLO, whose operations are the identity.
"""
import atexit
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.errors import UserError


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank uses the sum, so each input's gradient is
    the sum of every rank's."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the global batch on the CPU (gloo), where nn.SyncBatchNorm refuses to run:
    sums all-reduced with gradients, the two-pass variance, running statistics as F.batch_norm
    updates them (unbiased variance of the global batch)."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        sums = _SumOverRanks.apply(torch.cat([x.sum(0), x.new_full((1,), len(x))]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        var = _SumOverRanks.apply(((x - mean) ** 2).sum(0)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the gradient of this rank's rows is their slice times K
    (every rank computes the same loss from the gathered batch; DDP then divides by K)."""

    @staticmethod
    def forward(ctx, x, counts, rank):
        ctx.first, ctx.rows, ctx.size = sum(counts[:rank]), len(x), len(counts)
        padded = x.new_zeros(max(counts), *x.shape[1:])  # all_gather wants equal shapes
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.first:ctx.first + ctx.rows] * ctx.size, None, None


class World:
    """This process's rank among `size` processes; a global batch of n rows is split into
    contiguous shares, the first n % size ranks taking one row more."""

    def __init__(self, rank=0, size=1, local_rank=0):
        self.rank, self.size, self.local_rank = rank, size, local_rank

    @property
    def is_main(self):
        """Rank 0 alone writes files, plots and progress bars."""
        return self.rank == 0

    def device_name(self, name):
        """--device cuda under torchrun means this node's GPU number LOCAL_RANK."""
        if self.size > 1 and isinstance(name, str) and name.startswith('cuda'):
            return f'cuda:{self.local_rank}'
        return name

    def counts(self, n):
        return [n // self.size + (r < n % self.size) for r in range(self.size)]

    def share(self, n):
        """The rows of a global batch of n that this rank runs."""
        first = sum(self.counts(n)[:self.rank])
        return slice(first, first + self.counts(n)[self.rank])

    def gather_rows(self, n, *tensors):
        """The tensors of the whole global batch of n rows from each rank's share, with gradients
        (one all_gather for all of them)."""
        if self.size == 1:
            return tensors
        widths = [x.shape[1] for x in tensors]
        whole = _GatherRows.apply(torch.cat(tensors, dim=1), self.counts(n), self.rank)
        return whole.split(widths, dim=1)

    def whole_batch_norm(self, f):
        """‖f‖ over the global batch of which f holds this rank's rows (AGAH's normalisation)."""
        if self.size == 1:
            return f.norm()
        squares = (f.float() ** 2).sum()
        dist.all_reduce(squares)
        return squares.sqrt().to(f.dtype)

    def wrap(self, module, device):
        """`module` under DDP, its BatchNorm layers over the global batch. Buffers are not synced:
        the running statistics come from global statistics, so they agree on every rank."""
        if self.size == 1:
            return module
        if device.type == 'cuda':
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return DistributedDataParallel(module, device_ids=[device], forward_sync_buffers=False)
        for layer in module.modules():
            if type(layer) is nn.BatchNorm1d:
                layer.__class__ = GlobalBatchNorm1d  # same parameters and buffers, global forward
        return DistributedDataParallel(module, forward_sync_buffers=False)

    def agree(self, stop=None, error=None):
        """The same decision on every rank: a UserError on any rank is raised on all (the lowest
        failing rank's message), and the signal number a GracefulStop caught on any rank is
        returned (0: none). Every rank must call it at the same point."""
        signum = (stop.signum or 0) if stop is not None else 0
        if self.size == 1:
            if error is not None:
                raise error
            return signum
        flags = torch.tensor([signum, error is not None])  # a CPU tensor: gloo, no GPU sync
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1]:
            messages = [None] * self.size
            dist.all_gather_object(messages, None if error is None else str(error))
            raise UserError(next(m for m in messages if m is not None))
        return int(flags[0])

    def finish(self):
        """The end of a run that went well: every rank waits here for the others (rank 0 writes
        its last files), then leaves with status 0 (leave)."""
        if self.size > 1:
            dist.barrier()
            leave(0)

    @contextlib.contextmanager
    def one_outcome(self):
        """Run a block that may end in a UserError on some ranks only (a file missing on one node):
        every rank leaves it with the same error, before any rank reaches a collective after it."""
        error = None
        try:
            yield
        except UserError as e:
            error = e
        self.agree(error=error)


SOLO = World()


def leave(status):
    """End this process with `status`. Under torchrun it flushes its output and ends at once,
    without the interpreter's shutdown: a gloo thread that releases a finished collective's tensors
    then needs the interpreter's lock, which shutdown no longer gives, and aborts the process
    ('terminate called without an active exception', exit -6, seen in about one run in four)."""
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def start():
    """The World of this process: torchrun's (WORLD_SIZE > 1 in the environment) or SOLO.

    Gloo carries CPU tensors (and the control flags of `agree`), NCCL CUDA tensors. A rank that
    dies makes torchrun end the others (SIGTERM, then SIGKILL after its grace period); one that
    hangs ends in the collective timeout. Ranks other than 0 print nothing on stdout."""
    if int(os.environ.get('WORLD_SIZE', 1)) == 1:
        return SOLO
    dist.init_process_group('cpu:gloo,cuda:nccl' if torch.cuda.is_available() else 'gloo')
    atexit.register(dist.destroy_process_group)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ['LOCAL_RANK']))
    if not world.is_main:
        sys.stdout = open(os.devnull, 'w')
    return world
