"""Evaluation helpers: known-answer cases for the Fréchet distance, inception/DINOv2 score and CLIP score, and
encoders from local files (small random networks)."""

import math

import pytest
import torch
from torch import nn

from deltaconv_kernels.distill import evaluation as ev


def _feats(n=300, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_identical_features_give_zero():
    f = _feats()
    assert ev.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)


def test_shifted_means_give_squared_shift():
    f = _feats()
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25], dtype=torch.float64)
    # Same covariance, means differ by delta: FD = |delta|^2 exactly.
    assert ev.frechet_distance(f, f + delta) == pytest.approx(float(delta.pow(2).sum()), rel=1e-9)


def test_diagonal_gaussians_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    # Commuting covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2 = 1 + 1 + 0.
    fd = ev.frechet_distance_from_stats(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert fd == pytest.approx(5.0 + 2.0, rel=1e-12)


def test_non_commuting_covariances_match_scipy_style_formula():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, 4, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(4, dtype=torch.float64)
    # Independent route: tr sqrt(S1 S2) from the eigenvalues of the (non-symmetric) product.
    eig = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    expected = float(torch.trace(s1) + torch.trace(s2) - 2 * eig)
    zero = torch.zeros(4)
    assert ev.frechet_distance_from_stats(zero, s1, zero, s2) == pytest.approx(expected, rel=1e-9)


def test_gaussian_stats_unbiased():
    f = _feats(50, 3)
    mu, cov = ev.gaussian_stats(f)
    assert torch.allclose(cov, torch.cov(f.T), rtol=1e-12, atol=1e-12)
    assert torch.allclose(mu, f.mean(0))


def test_inception_score_known_answers():
    k = 7
    confident = torch.eye(k).repeat(3, 1) * 1000.0     # each sample sure of one class, classes balanced
    assert ev.inception_score(confident)[0] == pytest.approx(k, rel=1e-6)
    same = torch.zeros(20, k)
    same[:, 2] = 1000.0                                  # every sample the same class: score 1
    assert ev.inception_score(same)[0] == pytest.approx(1.0, rel=1e-9)
    uniform = torch.zeros(10, k)                         # no confidence: score 1
    assert ev.inception_score(uniform)[0] == pytest.approx(1.0, rel=1e-9)
    mean, std = ev.inception_score(torch.eye(4).repeat(4, 1) * 1000.0, splits=2)
    assert mean == pytest.approx(4.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    assert ev.dinov2_score is ev.inception_score


def test_inception_score_two_class_hand_computed():
    # p(y|x) = (0.75, 0.25) and (0.25, 0.75): marginal (0.5, 0.5); KL = 0.75 ln 1.5 + 0.25 ln 0.5 each.
    logits = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert ev.inception_score(logits)[0] == pytest.approx(math.exp(kl), rel=1e-9)


def test_clip_score_known_answers():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    txt = torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # cosines 1, -1 (clipped to 0), 1/sqrt(2)
    assert ev.clip_score(img, txt) == pytest.approx(100 * (1 + 0 + 2 ** -0.5) / 3, rel=1e-9)


def test_extract_with_a_random_encoder_and_bad_outputs():
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(10, 3, 2, 2)
    feats = ev.extract(enc, x, batch_size=3)
    assert feats.shape == (10, 5)
    with torch.no_grad():
        assert torch.allclose(feats, enc(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        ev.extract(lambda t: t, x)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_load_encoder_from_local_files(tmp_path):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = enc(x)
    torch.jit.save(torch.jit.script(enc), tmp_path / "enc.ts")
    torch.save(enc.state_dict(), tmp_path / "sd.pt")
    from safetensors.torch import save_file

    save_file(enc.state_dict(), str(tmp_path / "w.safetensors"))
    with torch.no_grad():
        assert torch.equal(ev.load_encoder(tmp_path / "enc.ts")(x), want)
        fresh = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        assert torch.equal(ev.load_encoder(tmp_path / "sd.pt", module=fresh)(x), want)
        fresh2 = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        assert torch.equal(ev.load_encoder(tmp_path / "w.safetensors", module=fresh2)(x), want)
    torch.export.save(torch.export.export(enc, (x,)), str(tmp_path / "enc.pt2"))
    with torch.no_grad():
        assert torch.allclose(ev.load_encoder(tmp_path / "enc.pt2")(x), want)
    with pytest.raises(ValueError, match="pass module="):
        ev.load_encoder(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="state dict"):
        ev.load_encoder(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        ev.load_encoder(tmp_path / "missing.pt")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="features_a must be"):
        ev.frechet_distance(torch.zeros(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        ev.frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="feature dims differ"):
        ev.frechet_distance(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        ev.frechet_distance(torch.full((3, 2), math.nan), torch.randn(3, 2))
    with pytest.raises(ValueError, match="splits"):
        ev.inception_score(torch.randn(3, 4), splits=5)
