"""Distillation losses against hand-computed values (Min-SNR-γ weights at known timesteps)."""

import math

import pytest
import torch

from deltaconv_kernels.distill import losses
from deltaconv_kernels.testing import assert_close

# ᾱ chosen so that SNR = ᾱ/(1-ᾱ) is 1, 4, 9, 99 at t = 0..3.
ALPHAS = torch.tensor([0.5, 0.8, 0.9, 0.99], dtype=torch.float64)
T = torch.arange(4)


def test_snr_values():
    assert_close(losses.snr(ALPHAS, T), torch.tensor([1.0, 4.0, 9.0, 99.0]), torch.float32)


@pytest.mark.parametrize("prediction_type, expected", [
    ("epsilon", [1.0, 1.0, 5 / 9, 5 / 99]),          # min(SNR, 5) / SNR
    ("v_prediction", [0.5, 0.8, 0.5, 5 / 100]),      # min(SNR, 5) / (SNR + 1)
    ("sample", [1.0, 4.0, 5.0, 5.0]),                # min(SNR, 5)
])
def test_min_snr_weights_hand_computed(prediction_type, expected):
    w = losses.min_snr_weights(ALPHAS, T, gamma=5.0, prediction_type=prediction_type)
    assert_close(w, torch.tensor(expected), torch.float32)


def test_min_snr_gamma_none_is_uniform_and_gamma_changes_clip():
    assert torch.equal(losses.min_snr_weights(ALPHAS, T, None), torch.ones(4))
    w = losses.min_snr_weights(ALPHAS, T, gamma=2.0)
    assert_close(w, torch.tensor([1.0, 0.5, 2 / 9, 2 / 99]), torch.float32)


def test_min_snr_on_diffusers_linear_schedule():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    a = sched.alphas_cumprod
    # t = 0: ᾱ = 1 - β_0 = 0.9999 (up to the fp32 the scheduler stores), SNR ≈ 9999, weight 5/SNR.
    assert abs(float(a[0]) - 0.9999) < 1e-7
    t = torch.tensor([0, 1, 999])
    # t = 1: ᾱ_1 = ᾱ_0 (1 - β_1), β_1 = 1e-4 + (0.02 - 1e-4)/999; the weights use the scheduler's fp32 values.
    assert abs(float(a[1]) - 0.9999 * (1 - (1e-4 + (0.02 - 1e-4) / 999))) < 1e-7
    a0, a1 = float(a[0]), float(a[1])
    snr0, snr1 = a0 / (1 - a0), a1 / (1 - a1)
    w = losses.min_snr_weights(a, t, 5.0, "epsilon")
    assert_close(w[:2], torch.tensor([5 / snr0, 5 / snr1]), torch.float32)
    assert float(w[2]) == 1.0  # SNR(999) < 5: weight 1
    v = losses.min_snr_weights(a, t, 5.0, "v_prediction")
    snr999 = float(a[999]) / (1 - float(a[999]))
    assert_close(v, torch.tensor([5 / (snr0 + 1), 5 / (snr1 + 1), snr999 / (snr999 + 1)]), torch.float32)


def test_weighted_mse_hand_computed():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    # per-sample MSE: (1 + 4)/2 = 2.5 and (9 + 1)/2 = 5
    assert float(losses.weighted_mse(pred, target)) == pytest.approx(3.75, rel=1e-7)
    assert float(losses.weighted_mse(pred, target, torch.tensor([2.0, 0.1]))) == pytest.approx((5 + 0.5) / 2, rel=1e-7)


def test_feature_mse_is_mean_over_layers_and_teacher_gets_no_grad():
    s1 = torch.ones(2, 3, requires_grad=True)
    t1 = torch.zeros(2, 3, requires_grad=True)
    s2 = torch.full((1, 4), 2.0, requires_grad=True)
    t2 = torch.zeros(1, 4)
    loss = losses.feature_mse([(s1, t1), (s2, t2)])
    assert float(loss.detach()) == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert t1.grad is None and s1.grad is not None
    with pytest.raises(ValueError, match="at least one"):
        losses.feature_mse([])


def test_distillation_loss_combines_weighted_terms():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 3, generator=g)
    noise = torch.randn(2, 4, 3, 3, generator=g)
    feats = [(torch.randn(2, 9, 8, generator=g), torch.randn(2, 9, 8, generator=g))]
    sw = torch.tensor([0.3, 1.0])
    w = losses.LossWeights(output=1.5, feature=0.25, noise=2.0)
    total, parts = losses.distillation_loss(student, teacher, w, sw, feats, noise)
    out = ((student - teacher) ** 2).flatten(1).mean(1).mul(sw).mean()
    nz = ((student - noise) ** 2).flatten(1).mean(1).mul(sw).mean()
    ft = ((feats[0][0] - feats[0][1]) ** 2).mean()
    expected = 1.5 * out + 0.25 * ft + 2.0 * nz
    assert_close(total.detach().reshape(1), expected.detach().reshape(1), torch.float32)
    assert parts["output"] == pytest.approx(float(out.detach()), rel=1e-5)
    assert parts["noise"] == pytest.approx(float(nz.detach()), rel=1e-5)
    total.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_zero_weight_terms_are_skipped():
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    total, parts = losses.distillation_loss(s, t, losses.LossWeights(feature=0.0, noise=0.0))
    assert set(parts) == {"output", "total"}
    with pytest.raises(ValueError, match="true_target"):
        losses.distillation_loss(s, t, losses.LossWeights(feature=0.0, noise=1.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"output": -1.0}, "output"), ({"feature": math.nan}, "feature"), ({"gamma": 0.0}, "gamma"),
    ({"feature_target": "attn2"}, "feature_target"),
])
def test_loss_weights_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.LossWeights(**kwargs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prediction_type"):
        losses.min_snr_weights(ALPHAS, T, 5.0, "flow")
    with pytest.raises(ValueError, match="timesteps must lie"):
        losses.snr(ALPHAS, torch.tensor([4]))
    with pytest.raises(ValueError, match="weights must have shape"):
        losses.weighted_mse(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))
