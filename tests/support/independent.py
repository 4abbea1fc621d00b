"""An independent formulation of the ΔConvBlock for testing the reference: NCHW layout, `nn.Conv2d(groups=Ci)`,
`F.adaptive_avg_pool2d` and `F.interpolate`, written from docs/DESIGN.md §1, not from deltaconv_kernels.reference."""

import torch
import torch.nn.functional as F
from torch import nn


def stage_nchw(u_nchw, weight_kkc, scale, gate, gate_scale):
    _, ci, h, w = u_nchw.shape
    k = weight_kkc.shape[0]
    t = u_nchw
    if scale != 1:
        t = F.adaptive_avg_pool2d(t, (max(1, int(h * scale)), max(1, int(w * scale))))
    conv = nn.Conv2d(ci, ci, k, padding=k // 2, groups=ci, bias=False).to(t.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight_kkc.detach().permute(2, 0, 1).unsqueeze(1))
    conv.weight.requires_grad_(False)
    d = conv(t)
    a, g = d[:, : ci // 2], d[:, ci // 2:]
    z = a * g * gate_scale if gate == "scaled" else a * torch.sigmoid(g)
    if scale != 1:
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
    return z


def block_nchw(x_bhwc, p_in_w, p_in_b, weights, scales, p_out_w, p_out_b, pool_w, pool_b, gate, gate_scale):
    x = x_bhwc.permute(0, 3, 1, 2).contiguous()
    u = torch.einsum("bchw,oc->bohw", x, p_in_w) + p_in_b[None, :, None, None]
    z = torch.cat([stage_nchw(u, w, s, gate, gate_scale) for w, s in zip(weights, scales)], dim=1)
    y = torch.einsum("bchw,oc->bohw", z, p_out_w) + p_out_b[None, :, None, None]
    pooled = x.mean(dim=(2, 3)) @ pool_w.t() + pool_b
    y = y + pooled[:, :, None, None]
    return y.permute(0, 2, 3, 1)
