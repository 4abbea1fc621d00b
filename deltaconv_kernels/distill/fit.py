"""Step 0 of distillation (docs/DESIGN.md §10): a ridge least-squares fit of every ΔConvBlock's `proj_out` and
`pool_proj` to the teacher's attn1 outputs, layer by layer in forward order, and the feature error that tells
whether an initialisation is any better than a block that outputs zeros.

Both run on a model converted with its attention kept, while a caller-given `run(model)` calls it on calibration
inputs. The block's output is linear in (`proj_out`, `pool_proj`) once its input, `proj_in` and kernels are fixed:
`y = concat W_out^T + mean(x) W_pool^T + b`, so the fit accumulates the normal equations of
`z = [concat, mean(x), 1]` against the teacher's output token by token (memory: one `[D, D]` and one `[D, C]`
matrix per layer, D = Ci/2 * stages + C + 1) and solves them once per layer. Layer l is fitted on the hidden
states that the already-fitted layers before it produce, so each fit sees the inputs it will get as a student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import deltaconv_kernels.integrations.diffusers.sites as dm
from deltaconv_kernels import reference
from deltaconv_kernels.integrations.diffusers.attention import DeltaConvAttention

RIDGE = 1e-4  # ridge strength relative to the mean diagonal of z^T z: only steadies directions the data never takes


def forward_order(model: torch.nn.Module) -> dict[str, DeltaConvAttention]:
    """The converted layers of `model` in forward order (U-Nets: down, mid, up), each with its attention kept."""
    layers = {}
    for site in dm.find_sites(model):
        module = site.block.attn1
        if not isinstance(module, DeltaConvAttention):
            raise ValueError(f"{site.name} is not a ΔConvBlock layer: convert the model first")
        if module.attention is None:
            raise ValueError(f"{site.name}: the fit needs the teacher's attention: convert with keep_attention=True")
        layers[site.name] = module
    return layers


def block_features(block, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(concat [B, N, Ci/2 * stages], mean [B, C])` in float64: what `proj_out` and `pool_proj` multiply."""
    b, n, c = x.shape
    spatial = x.detach().to(torch.float64).reshape(b, hw[0], hw[1], c)
    in_w, in_b = (t.detach().double() for t in block.proj_in())
    u = F.linear(spatial, in_w, in_b)
    concat = reference.pyramid(u, [s().detach().double() for s in block.stages], block.scales, block.gate,
                               block.gate_scale)
    return concat.reshape(b, n, -1), spatial.mean((1, 2))


class NormalEquations:
    """`z^T z` and `z^T t` over every token seen, z = [concat, mean(x) of its sample, 1]."""

    def __init__(self):
        self.zz = self.zt = None
        self.tokens = 0

    def add(self, concat: torch.Tensor, mean: torch.Tensor, target: torch.Tensor) -> None:
        b, n, _ = concat.shape
        ones = torch.ones(b, n, 1, dtype=torch.float64, device=concat.device)
        z = torch.cat([concat, mean[:, None, :].expand(b, n, -1), ones], dim=-1).reshape(b * n, -1)
        t = target.detach().to(torch.float64).reshape(b * n, -1)
        zz, zt = (z.t() @ z).cpu(), (z.t() @ t).cpu()
        self.zz = zz if self.zz is None else self.zz + zz
        self.zt = zt if self.zt is None else self.zt + zt
        self.tokens += b * n

    def solve(self, ridge: float = RIDGE) -> torch.Tensor:
        """`[D, C]` ridge least-squares solution."""
        diag = float(self.zz.diagonal().mean())
        a = self.zz + ridge * max(diag, 1e-30) * torch.eye(self.zz.shape[0], dtype=torch.float64)
        return torch.linalg.solve(a, self.zt)


def _tap(layer: DeltaConvAttention, equations: NormalEquations):
    """Forward hook on a layer in "teacher" mode: its input and the teacher's output on it go into `equations`."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        hw = module._size.get(x.shape[1], module.layer_name)
        with torch.no_grad():
            concat, mean = block_features(module.block, x, hw)
            equations.add(concat, mean, output)
    return layer.register_forward_hook(hook, with_kwargs=True)


@torch.no_grad()
def fit_output_projections(model: torch.nn.Module, run, ridge: float = RIDGE) -> dict[str, dict]:
    """Fit `proj_out` and `pool_proj` of every ΔConvBlock in forward order (see the module docstring); the other
    parameters stay as they are. Returns per layer the tokens used. Every layer ends in "student" mode."""
    layers = forward_order(model)
    records = {}
    try:
        for name, layer in layers.items():
            for other in layers.values():  # earlier layers fitted (students), the rest teachers
                other.mode = "teacher"
            for done in records:
                layers[done].mode = "student"
            equations = NormalEquations()
            handle = _tap(layer, equations)
            try:
                run(model)
            finally:
                handle.remove()
            if equations.tokens == 0:
                raise RuntimeError(f"{name} never ran during the calibration forwards: nothing to fit it to")
            solution = equations.solve(ridge)
            if not torch.isfinite(solution).all():
                raise ValueError(f"{name}: the least-squares fit is not finite (calibration outputs overflowed?)")
            block, d = layer.block, layer.block.proj_out.weight.shape[1]
            block.proj_out.weight.copy_(solution[:d].t())
            block.pool_proj.weight.copy_(solution[d:d + block.dim].t())
            block.proj_out.bias.copy_(solution[-1])
            block.pool_proj.bias.zero_()
            records[name] = {"tokens": equations.tokens, "ridge": ridge}
    finally:
        for layer in layers.values():
            layer.mode = "student"
    return records


@torch.no_grad()
def feature_errors(model: torch.nn.Module, run) -> dict[str, float]:
    """Per layer `sum (block - teacher)^2 / sum teacher^2` over the calibration forwards, every layer a student
    whose teacher runs on the same input (the "distill" mode): 1.0 is what a block that outputs zeros scores."""
    layers = forward_order(model)
    sums = {name: [0.0, 0.0] for name in layers}
    handles = []

    def hook_for(name):
        def hook(module, args, output):
            student, teacher = module.last_features
            sums[name][0] += float((student.double() - teacher.double()).pow(2).sum())
            sums[name][1] += float(teacher.double().pow(2).sum())
        return hook

    try:
        for name, layer in layers.items():
            layer.mode = "distill"
            handles.append(layer.register_forward_hook(hook_for(name)))
        run(model)
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers.values():
            layer.mode = "student"
    never = [n for n, (_, t) in sums.items() if t == 0.0]
    if never:
        raise RuntimeError(f"layers {never} never ran (or the teacher output only zeros) during the calibration "
                           "forwards: no feature error to measure")
    return {name: err / ref for name, (err, ref) in sums.items()}
