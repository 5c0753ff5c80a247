"""Two CPU processes (gloo) see what one process sees over their joint batch: AllReduceBatchNorm2d
gives BatchNorm2d's outputs, gradients and running statistics over the whole batch, and the
transform pads every process's batch to the same size; plus the data-side scale and the
out-of-place batch (single process)."""
from __future__ import annotations

import torch
import torch.multiprocessing as mp
from torch import nn

from assigndet.nn.syncbn import AllReduceBatchNorm2d, convert_sync_batchnorm
from assigndet.nn.transform import ImageTransform, pad_batch

WORLD = 2


def _transform(**kw) -> ImageTransform:
    args = dict(min_size_train=[64, 96], max_size_train=128, min_size_test=64, max_size_test=128,
                pixel_mean=[100.0, 110.0, 120.0], pixel_std=[1.0, 1.0, 1.0])
    args.update(kw)
    return ImageTransform(**args)


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """Plain BatchNorm2d over the whole batch: output, running stats, grads of x / weight / bias."""
    bn = nn.BatchNorm2d(x.shape[1], momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
    return y.detach(), bn.running_mean, bn.running_var, x.grad, bn.weight.grad, bn.bias.grad


def _worker(rank: int, init: str, queue) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * 3 + 2  # the joint batch; this rank takes 2 images
    weight, bias = torch.rand(3) + 0.5, torch.randn(3)
    ref = _reference(x, weight, bias)
    model, n = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=0.3)), torch.device("cpu"))
    bn = model[0]
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    part = x[2 * rank: 2 * rank + 2].clone().requires_grad_(True)
    y = bn(part)
    coef = torch.arange(x.numel(), dtype=x.dtype).view_as(x).sin()[2 * rank: 2 * rank + 2]
    (y * coef).sum().backward()
    for g in (bn.weight.grad, bn.bias.grad):  # DDP would do this: mean of the parameter gradients
        torch.distributed.all_reduce(g)
        g /= WORLD
    # The losses are summed over the ranks here while one process takes their sum too: parameter
    # gradients are then the mean times WORLD, which DDP's mean undoes for a mean loss.
    got = (y.detach(), bn.running_mean, bn.running_var, part.grad, bn.weight.grad * WORLD, bn.bias.grad * WORLD)
    want = (ref[0][2 * rank: 2 * rank + 2], ref[1], ref[2], ref[3][2 * rank: 2 * rank + 2], ref[4], ref[5])
    errors = [float((a - b).abs().max()) for a, b in zip(got, want)]
    # padding: rank 0 has a 40x50 and a 64x70 image, rank 1 one of 90x33 -> both pad to 96x96
    t = _transform().train()
    images = [torch.rand(3, 40, 50), torch.rand(3, 64, 70)] if rank == 0 else [torch.rand(3, 90, 33)]
    targets = [{"boxes": torch.zeros(0, 4), "min_size": s} for s in ([40, 64] if rank == 0 else [33])]
    batch, _, _ = t(images, targets)
    queue.put((rank, n, type(bn).__name__, errors, tuple(batch.shape)))
    torch.distributed.destroy_process_group()


def test_all_reduce_batchnorm_and_padding_equal_one_process_over_the_joint_batch(tmp_path):
    ctx = mp.get_context("spawn")  # a forked child of a process whose OpenMP threads ran can hang
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_worker, args=(r, init, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, n, name, errors, shape in results:
        assert n == 1 and name == "AllReduceBatchNorm2d"
        assert max(errors) < 1e-5, (rank, errors)  # output, running mean/var, grads of input, weight, bias
    assert [r[4] for r in results] == [(2, 3, 96, 96), (1, 3, 96, 96)]  # same padded size on both ranks


def test_batchnorm_unchanged_outside_distributed_and_converted_layers_share_parameters():
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bn, nn.GroupNorm(2, 4))
    converted, n = convert_sync_batchnorm(model, torch.device("cpu"))
    assert n == 1 and isinstance(converted[1], AllReduceBatchNorm2d) and isinstance(converted[2], nn.GroupNorm)
    assert converted[1].weight is bn.weight and converted[1].running_mean is bn.running_mean
    x = torch.randn(2, 4, 3, 3)
    ref = nn.BatchNorm2d(4)
    assert torch.equal(converted[1](x), ref(x)) and torch.equal(converted[1].running_var, ref.running_var)


def test_transform_takes_the_short_side_from_the_target():
    t = _transform().train()
    img = torch.rand(3, 60, 70)
    _, sizes, _ = t([img, img], [{"boxes": torch.zeros(0, 4), "min_size": 64},
                                 {"boxes": torch.zeros(0, 4), "min_size": 80}])
    assert sizes == [(64, 74), (80, 93)]
    torch.manual_seed(0)
    drawn = {t([img], [{"boxes": torch.zeros(0, 4)}])[1][0][0] for _ in range(20)}
    assert len(drawn) > 1 and all(64 <= s <= 96 for s in drawn)  # no min_size: torch's RNG, as before
    assert t.eval()([img], [{"boxes": torch.zeros(0, 4), "min_size": 80}])[1] == [(64, 74)]  # test size


def test_batch_carries_gradients_to_the_input_images():
    img = torch.rand(3, 30, 40, requires_grad=True)
    batch = pad_batch([img, torch.rand(3, 20, 50)], 32)
    assert batch.shape == (2, 3, 32, 64) and torch.equal(batch[0, :, :30, :40], img.detach())
    assert batch[0, :, 30:].abs().sum() == 0
    batch.sum().backward()
    assert torch.equal(img.grad, torch.ones_like(img))
    t = _transform().eval()
    out, _, _ = t([img])
    out.sum().backward()  # used to fail: in-place copy into a batch made without grad
    assert img.grad is not None
