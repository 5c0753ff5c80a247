import math

import pytest
import torch
import torch.nn.functional as F

from assigndet.ops import MultiScalePrRoIPool, PrRoIPool, map_roi_levels, prroi_pool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def hat_matrix(coords, size):
    """h(c - i) = max(0, 1 - |c - i|) for coords (N,) and i in [0, size) -> (N, size)."""
    i = torch.arange(size, dtype=coords.dtype, device=coords.device)
    return (1 - (coords[:, None] - i[None, :]).abs()).clamp(min=0)


def brute_force(features, rois, out_hw, scale, n=64):
    """Midpoint rule on an n x n grid per bin of the bilinear field F(y, x) = sum f h(y-i) h(x-j)."""
    ph, pw = out_hw
    B, C, H, W = features.shape
    out = features.new_zeros(rois.shape[0], C, ph, pw)
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        x1, y1, x2, y2 = (v * scale for v in roi[1:])
        bw, bh = max(x2 - x1, 0) / pw, max(y2 - y1, 0) / ph
        if bw * bh == 0:
            continue
        t = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # (n,) midpoints in a bin
        ys = (y1 + (torch.arange(ph, dtype=torch.float64)[:, None] + t) * bh).reshape(-1)  # (PH n,)
        xs = (x1 + (torch.arange(pw, dtype=torch.float64)[:, None] + t) * bw).reshape(-1)  # (PW n,)
        hy = hat_matrix(ys, H).to(features)  # (PH n, H)
        hx = hat_matrix(xs, W).to(features)  # (PW n, W)
        field = hy @ features[b] @ hx.T  # (C, PH n, PW n)
        out[r] = field.reshape(C, ph, n, pw, n).mean(dim=(2, 4))
    return out


def dense_closed_form(features, rois, out_hw, scale):
    """SPEC §5.5 literally: out = K_y f K_x^T / (b_w b_h) with full (P, H) and (P, W) matrices."""

    def hat_int(u):
        u = u.clamp(-1, 1)
        return torch.where(u < 0, 0.5 * (1 + u) ** 2, 1 - 0.5 * (1 - u) ** 2)

    ph, pw = out_hw
    B, C, H, W = features.shape
    x1, y1, x2, y2 = (rois[:, 1:] * scale).unbind(dim=1)  # (R,)
    bw, bh = (x2 - x1).clamp(min=0) / pw, (y2 - y1).clamp(min=0) / ph
    u1 = x1[:, None] + torch.arange(pw, dtype=rois.dtype) * bw[:, None]  # (R, PW)
    v1 = y1[:, None] + torch.arange(ph, dtype=rois.dtype) * bh[:, None]  # (R, PH)
    j = torch.arange(W, dtype=rois.dtype)
    i = torch.arange(H, dtype=rois.dtype)
    kx = hat_int(u1[..., None] + bw[:, None, None] - j) - hat_int(u1[..., None] - j)  # (R, PW, W)
    ky = hat_int(v1[..., None] + bh[:, None, None] - i) - hat_int(v1[..., None] - i)  # (R, PH, H)
    area = bw * bh  # (R,)
    f = features[rois[:, 0].long()]  # (R, C, H, W)
    out = torch.einsum("rpi,rcij,rqj->rcpq", ky, f, kx)  # (R, C, PH, PW)
    safe = torch.where(area > 0, area, torch.ones_like(area))
    return torch.where((area > 0)[:, None, None, None], out / safe[:, None, None, None], out * 0)


def random_rois(g, n, batch, img_h, img_w, min_size=0.5, max_size=None, margin=0.2, dtype=torch.float64):
    """RoIs in image pixels, some partly outside the image."""
    max_size = max_size or max(img_h, img_w) * 0.8
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * (max_size - min_size) + min_size
    lo = torch.tensor([-margin * img_w, -margin * img_h], dtype=dtype)
    hi = torch.tensor([img_w * (1 + margin), img_h * (1 + margin)], dtype=dtype)
    xy = lo + torch.rand(n, 2, generator=g, dtype=dtype) * (hi - lo - wh).clamp(min=0)
    b = torch.randint(0, batch, (n, 1), generator=g).to(dtype)
    return torch.cat((b, xy, xy + wh), dim=1)


def test_matches_brute_force_integration():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    scale = 0.5
    rois = random_rois(g, 12, 2, 18, 22)
    extra = torch.tensor(
        [
            [0, 2.2, 3.1, 2.3, 3.15],  # tiny
            [1, -10.0, -8.0, 4.0, 30.0],  # mostly outside, touches the border decay
            [1, 21.0, 17.0, 27.0, 24.0],  # in the decaying strip beyond the last row/column
            [0, 40.0, 40.0, 60.0, 60.0],  # entirely outside: 0
            [1, 3.0, 3.0, 3.0, 9.0],  # zero width: 0
        ],
        dtype=torch.float64,
    )
    rois = torch.cat((rois, extra))
    out = prroi_pool(feats, rois, (3, 2), scale)
    ref = brute_force(feats, rois, (3, 2), scale, n=160)
    assert out.shape == (17, 3, 3, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-4)
    assert (out[-2:] == 0).all()


def test_matches_dense_closed_form_exactly():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 4, 13, 10, generator=g, dtype=torch.float64)
    big = random_rois(g, 40, 3, 52, 40, max_size=60)
    tiny = random_rois(g, 20, 3, 52, 40, min_size=0.01, max_size=2)
    rois = torch.cat((big, tiny))
    feats.requires_grad_(True)
    r1 = rois.clone().requires_grad_(True)
    r2 = rois.clone().requires_grad_(True)
    out = prroi_pool(feats, r1, 7, 0.25)
    ref = dense_closed_form(feats, r2, (7, 7), 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gf1, gr1 = torch.autograd.grad(out, (feats, r1), gout)
    gf2, gr2 = torch.autograd.grad(ref, (feats, r2), gout)
    torch.testing.assert_close(gf1, gf2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gr1, gr2, rtol=1e-10, atol=1e-10)
    assert (gr1[:, 0] == 0).all()  # no gradient to the batch index


def test_original_repo_unit_test():
    """vacancy/PreciseRoIPooling's test: scale 0.5, RoI (0, 0, 14, 14), 7x7 == avg_pool2d(2, 1)."""
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 8, 24, 32, generator=g)
    rois = torch.tensor([[0, 0, 0, 14, 14], [1, 0, 0, 14, 14]], dtype=torch.float32)
    out = prroi_pool(feats, rois, 7, 0.5)
    ref = F.avg_pool2d(feats, kernel_size=2, stride=1)[:, :, :7, :7]
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(PrRoIPool(7, 0.5)(feats, rois), out)


def test_gradcheck_features_and_coordinates():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)  # not differentiable
    coords = torch.tensor(
        [[1.3, 2.2, 9.7, 8.9], [-2.1, 3.3, 4.4, 14.4], [5.05, 6.15, 5.35, 6.33], [8.1, 9.2, 13.9, 15.7]],
        dtype=torch.float64,
        requires_grad=True,
    )

    def fn(f, c):
        return prroi_pool(f, torch.cat((batch, c), dim=1), (2, 3), 0.6)

    # full Jacobian w.r.t. the coordinates; features through random projections (fast mode)
    assert torch.autograd.gradcheck(lambda c: fn(feats.detach(), c), (coords,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(fn, (feats, coords), eps=1e-6, atol=1e-6, fast_mode=True)


def test_coordinate_gradient_matches_line_integral_formula():
    """SPEC §5.5, one bin: dO/dX2 = (int F(y, X2) dy - b_h O) / (b_w b_h), times spatial_scale."""
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(1, 1, 8, 9, generator=g, dtype=torch.float64)
    scale = 0.5
    rois = torch.tensor([[0, 2.3, 3.1, 11.7, 9.9]], dtype=torch.float64, requires_grad=True)
    out = prroi_pool(feats, rois, 1, scale)
    (grad,) = torch.autograd.grad(out.sum(), rois)
    x1, y1, x2, y2 = (rois.detach()[0, 1:] * scale).tolist()
    bw, bh = x2 - x1, y2 - y1
    n = 20000
    ys = y1 + (torch.arange(n, dtype=torch.float64) + 0.5) * bh / n
    line = hat_matrix(ys, 8) @ feats[0, 0] @ hat_matrix(torch.tensor([x2], dtype=torch.float64), 9).T  # (n, 1)
    line_int = line.mean() * bh
    expected = (line_int - bh * out.item()) / (bw * bh) * scale
    assert grad[0, 3].item() == pytest.approx(expected.item(), abs=1e-7)


def test_zero_area_bins_give_zero_output_and_no_gradient():
    feats = torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 4.0, 2.0, 4.0, 9.0], [0, 3.0, 5.0, 9.0, 5.0], [0, 6.0, 6.0, 2.0, 9.0], [0, 5.0, 5.0, 5.0, 5.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    out = prroi_pool(feats, rois, 3, 1.0)
    assert (out == 0).all()
    out.sum().backward()
    assert (feats.grad == 0).all()
    assert (rois.grad == 0).all()
    assert torch.isfinite(rois.grad).all()


def test_empty_rois_and_output_size_and_dtypes():
    feats = torch.randn(1, 5, 6, 6)
    out = prroi_pool(feats, torch.zeros(0, 5), (2, 4), 1.0)
    assert out.shape == (0, 5, 2, 4)
    rois = torch.tensor([[0, 0.5, 0.7, 4.2, 5.1]])
    o32 = prroi_pool(feats, rois, (2, 4), 1.0)
    o64 = prroi_pool(feats.double(), rois.double(), (2, 4), 1.0)
    torch.testing.assert_close(o32.double(), o64, rtol=1e-5, atol=1e-5)
    cl = prroi_pool(feats.to(memory_format=torch.channels_last), rois, (2, 4), 1.0)
    torch.testing.assert_close(cl, o32)
    o16 = prroi_pool(feats.to(torch.bfloat16), rois, (2, 4), 1.0)
    assert o16.dtype == torch.bfloat16
    torch.testing.assert_close(o16.float(), o32, rtol=0, atol=5e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 4, 10, 12, generator=g)
    rois = random_rois(g, 20, 2, 40, 48, dtype=torch.float32)
    ref = prroi_pool(feats, rois, 7, 0.25)
    f = feats.to(device).requires_grad_(True)
    r = rois.to(device).requires_grad_(True)
    out = prroi_pool(f, r, 7, 0.25)
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert f.grad.device.type == device and r.grad.device.type == device


def test_map_roi_levels():
    sides = torch.tensor([1.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack((torch.zeros(8), torch.zeros(8), sides, sides), dim=1)
    assert map_roi_levels(boxes, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # w, h without +1; sqrt(w h) of a 56 x 224 box is 112
    assert map_roi_levels(torch.tensor([[10.0, 10.0, 66.0, 234.0]]), 4).tolist() == [1]
    # degenerate boxes go to the finest level
    assert map_roi_levels(torch.tensor([[5.0, 5.0, 5.0, 9.0], [9.0, 9.0, 2.0, 2.0]]), 4).tolist() == [0, 0]


def test_multiscale_pool_routes_each_box_to_its_level():
    g = torch.Generator().manual_seed(6)
    strides = (4, 8, 16, 32)
    img_h, img_w = 512, 576
    maps = {f"p{k}": torch.randn(2, 3, img_h // s, img_w // s, generator=g) for k, s in enumerate(strides)}
    maps["pool"] = torch.randn(2, 3, 4, 5, generator=g)  # ignored
    boxes = [
        torch.tensor([[10.0, 20.0, 60.0, 70.0], [0.0, 0.0, 250.0, 240.0], [30.0, 30.0, 150.0, 140.0]]),
        torch.tensor([[5.0, 5.0, 500.0, 460.0]]),
    ]
    for pool in (
        MultiScalePrRoIPool(["p0", "p1", "p2", "p3"], 5, strides),
        MultiScalePrRoIPool(["p0", "p1", "p2", "p3"], 5),  # strides from the image size
    ):
        out = pool(maps, boxes, [(img_h, img_w)] * 2)
        assert out.shape == (4, 3, 5, 5)
        all_boxes = torch.cat(boxes)
        batch = torch.tensor([0.0, 0, 0, 1])
        levels = map_roi_levels(all_boxes, 4)
        assert levels.tolist() == [0, 2, 1, 3]
        for k in range(4):
            lvl = int(levels[k])
            ref = prroi_pool(maps[f"p{lvl}"], torch.cat((batch[k : k + 1], all_boxes[k]))[None], 5, 1 / strides[lvl])
            torch.testing.assert_close(out[k : k + 1], ref, rtol=0, atol=0)
    # list input with an int level count
    pool = MultiScalePrRoIPool(4, 5, strides)
    torch.testing.assert_close(pool([maps[f"p{k}"] for k in range(4)], boxes), out)


def test_multiscale_pool_gradients_reach_boxes_and_features():
    g = torch.Generator().manual_seed(7)
    maps = [torch.randn(1, 2, 64 // s, 64 // s, generator=g, requires_grad=True) for s in (1, 2)]
    boxes = torch.tensor([[3.0, 4.0, 40.0, 50.0], [10.0, 8.0, 20.0, 30.0], [0.0, 0.0, 63.0, 60.0]], requires_grad=True)
    pool = MultiScalePrRoIPool(2, 3, strides=(4, 8), finest_scale=20)
    out = pool(maps, [boxes])
    out.square().sum().backward()
    assert boxes.grad is not None and (boxes.grad.abs().sum(dim=1) > 0).all()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    empty = pool(maps, [torch.zeros(0, 4)])
    assert empty.shape == (0, 2, 3, 3)
