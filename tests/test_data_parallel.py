"""Data parallelism without Ray: two gloo ranks on loopback train like one process on the union.

Averaged gradients of two equal half-batches are the gradient of the whole batch, so two ranks
stepping SGD on their halves must end with the parameters of one process on the full batch,
identical on both ranks; evaluation counts summed across ranks must equal a single evaluation.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmkd import methods
from cmkd.models import build_student, freeze, linear_head
from cmkd.train import SyncedOptimizer, broadcast_from_rank0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHAPES = {"mlp": (10,), "cnn": (1, 8, 8)}


def setup(seed=0, kind="mlp"):
    """A student (the CNN with channels-last weights, as cmkd.train.Run builds it), a teacher
    head and one batch; the batch does not depend on ``seed``."""
    torch.manual_seed(seed)
    extra = {"hidden": 16} if kind == "mlp" else {"width": 4}
    student = build_student(kind, SHAPES[kind], 4, feature_dim=6, **extra)
    student = student.to(memory_format=torch.channels_last)
    h_t = freeze(linear_head(6, 4))
    g = torch.Generator().manual_seed(1)
    y = torch.arange(16) % 4
    batch = methods.Batch(
        torch.randn(16, *SHAPES[kind], generator=g),
        y,
        torch.randn(16, 6, generator=g),
        y.clone(),
        torch.randn(16, 4, generator=g),
    )
    return student, h_t, batch


def half(batch, rank):
    sl = slice(rank * 8, rank * 8 + 8)
    return methods.Batch(
        batch.x_s[sl], batch.y_s[sl], batch.z_t[sl], batch.y_t[sl], batch.logits_t[sl]
    )


def rank_main(rank, port, algorithm, kind, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        student, h_t, batch = setup(seed=rank, kind=kind)  # rank 1 starts elsewhere...
        broadcast_from_rank0(student)  # ...and takes rank 0's start, as Run does
        broadcast_from_rank0(h_t)  # in a run, every rank reads the same teacher bank
        student.eval()  # BatchNorm on half a batch differs from the full batch: compare without it
        opt = SyncedOptimizer(torch.optim.SGD(student.parameters(), lr=0.1), world=2)
        step = methods.make_step(
            algorithm, fa=methods.make_fa("mmd"), la=methods.make_la("teacher_ce"), grad_clip=None
        )
        for _ in range(3):
            step(student, h_t, opt, half(batch, rank))
        torch.save(
            {k: v.detach().clone() for k, v in student.state_dict().items()}, out + f".{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "algorithm,kind", [("ce", "mlp"), ("ucmkd_sum", "mlp"), ("ucmkd_sum", "cnn")]
)
def test_two_ranks_match_one_process_on_the_whole_batch(algorithm, kind, tmp_path):
    out = str(tmp_path / "state")
    mp.spawn(rank_main, args=(free_port(), algorithm, kind, out), nprocs=2, join=True)
    r0, r1 = torch.load(out + ".0"), torch.load(out + ".1")
    student, h_t, batch = setup(kind=kind)
    student.eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    step = methods.make_step(
        algorithm, fa=methods.make_fa("mmd"), la=methods.make_la("teacher_ce"), grad_clip=None
    )
    for _ in range(3):
        if algorithm == "ce":
            step(student, h_t, opt, batch)
        else:  # the MMD term is not a mean over samples: average the two halves' gradients by hand
            opt.zero_grad()
            grads = []
            for r in (0, 1):
                student.zero_grad()
                b = half(batch, r)
                z = student.features(b.x_s)
                loss = (
                    torch.nn.functional.cross_entropy(student.head(z), b.y_s)
                    + methods.make_fa("mmd")(z, b.z_t, b.y_s, b.y_t)
                    + torch.nn.functional.cross_entropy(h_t(z), b.y_s)
                )
                grads.append(torch.autograd.grad(loss, list(student.parameters())))
            for p, g0, g1 in zip(student.parameters(), *grads, strict=True):
                p.grad = (g0 + g1) / 2
            opt.step()
    for k, v in student.state_dict().items():
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        assert torch.allclose(r0[k], v, atol=1e-6), f"{k} differs from one process"
