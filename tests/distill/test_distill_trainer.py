"""The distillation loop on tiny diffusers models: only ΔConvBlocks train, the teacher pass is the original
model, checkpoints are atomic, and a crashed run resumed from its checkpoint ends bit-for-bit equal to an
uninterrupted run (CPU)."""

import json

import pytest
import torch

pytest.importorskip("diffusers", reason="the distillation trainer converts diffusers models")
pytest.importorskip("safetensors", reason="the distillation trainer converts diffusers models")

from deltaconv_kernels.distill import checkpointing  # noqa: E402
from deltaconv_kernels.distill.data import random_dataset  # noqa: E402
from deltaconv_kernels.distill.losses import LossWeights  # noqa: E402
from deltaconv_kernels.distill.models import load_noise_scheduler, predict, student_state_dict  # noqa: E402
from deltaconv_kernels.distill.trainer import DistillConfig, DistillTrainer  # noqa: E402
from deltaconv_kernels.integrations.diffusers import convert, set_mode  # noqa: E402
from deltaconv_kernels.testing import assert_close  # noqa: E402

SIZES = [(16, 16), (16, 12)]


def _model(kind="pixart", seed=0):
    from tiny_models import tiny_pixart, tiny_unet

    model = tiny_pixart(seed=seed) if kind == "pixart" else tiny_unet("sd15", seed=seed)
    torch.manual_seed(seed + 100)  # the fresh ΔConvBlocks' init
    convert(model, kernel_sizes=3, keep_attention=True)
    return model


def _dataset(model, n=6):
    dim = model.config.get("caption_channels") or model.config.cross_attention_dim
    sizes = SIZES if dim == model.config.get("caption_channels") else [(16, 16)]  # U-Net mid block: 1/8 of it
    return random_dataset(n, model.config.in_channels, sizes, 5, dim, seed=3)


def _trainer(tmp_path, model, max_steps, callback=None, **overrides):
    cfg = dict(output_dir=str(tmp_path), max_steps=max_steps, batch_size=2, warmup_steps=2, checkpoint_every=2,
               log_every=1, progress=False, plot=False, seed=7)
    cfg.update(overrides)
    return DistillTrainer(model, load_noise_scheduler(None), _dataset(model), DistillConfig(**cfg),
                          step_callback=callback)


class Crash(RuntimeError):
    pass


def _crash_at(step):
    def callback(done):
        if done == step:
            raise Crash(f"killed after step {done}")
    return callback


def test_resume_after_crash_is_bit_for_bit(tmp_path):
    full = _trainer(tmp_path / "full", _model(), 6)
    full.train()
    want = student_state_dict(full.model)

    crashed = _trainer(tmp_path / "run", _model(), 6, callback=_crash_at(5))
    with pytest.raises(Crash):
        crashed.train()
    state = checkpointing.load_checkpoint(tmp_path / "run")
    assert state["step"] == 4  # checkpoint every 2: the crash lost step 5 only
    resumed = _trainer(tmp_path / "run", _model(), 6)
    resumed.train(resume=tmp_path / "run")
    got = student_state_dict(resumed.model)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    opt_a, opt_b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid, s in opt_a["state"].items():
        for key, value in s.items():
            assert torch.equal(value, opt_b["state"][pid][key]), (pid, key)
    hist = [json.loads(p.read_text()) for p in (tmp_path / "full" / "history.json", tmp_path / "run" / "history.json")]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in hist]
    assert strip[0] == strip[1] and len(strip[0]) == 6
    assert len((tmp_path / "run" / "history.csv").read_text().strip().splitlines()) == 7  # header + 6 rows


def test_only_deltaconv_blocks_change_and_teacher_is_the_original(tmp_path):
    from tiny_models import tiny_pixart

    original = tiny_pixart(seed=0)
    model = _model()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".block." not in k}
    blocks = {k: v.clone() for k, v in student_state_dict(model).items()}
    batch = _dataset(model).collate([0, 2])
    t = torch.tensor([10, 500])
    x = torch.randn(batch["latents"].shape)
    set_mode(model, "teacher")
    with torch.no_grad():
        assert_close(predict(model, x, t, batch), predict(original, x, t, batch), torch.float32)
    set_mode(model, "student")
    _trainer(tmp_path, model, 2).train()
    for k, v in model.state_dict().items():
        if ".block." not in k:
            assert torch.equal(v, frozen[k]), k
    changed = [k for k, v in student_state_dict(model).items() if not torch.equal(v, blocks[k])]
    assert len(changed) == len(blocks)
    assert (tmp_path / "deltaconv" / "deltaconv.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind, target", [("pixart", "attn1"), ("pixart", "hidden_states"), ("unet", "attn1")])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, kind, target):
    weights = LossWeights(feature=0.5, noise=0.3, feature_target=target)
    grads = []
    for ckpt in (False, True):
        tr = _trainer(tmp_path / str(ckpt), _model(kind), 1, gradient_checkpointing=ckpt, loss=weights)
        loss, parts = tr.compute_loss(tr._batch([0, 2] if kind == "pixart" else [0]), step=0)
        assert parts["feature"] > 0 and parts["noise"] > 0
        loss.backward()
        grads.append([p.grad.clone() for p in tr.trainable])
    for a, b in zip(*grads):
        assert_close(b, a, torch.float32, what="grad with checkpointing")


def test_resume_refuses_changed_settings(tmp_path):
    _trainer(tmp_path, _model(), 2).train()
    with pytest.raises(ValueError, match="learning_rate"):
        _trainer(tmp_path, _model(), 4, learning_rate=1e-3).train(resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _trainer(tmp_path / "other", _model(), 4).train(resume=tmp_path / "other")


def test_needs_kept_attention(tmp_path):
    from tiny_models import tiny_pixart

    model = tiny_pixart()
    convert(model, kernel_sizes=3)
    with pytest.raises(ValueError, match="keep_attention=True"):
        _trainer(tmp_path, model, 1)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    checkpointing.atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpointing.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_smoke(tmp_path, fresh_accelerate_state):
    model = _model()
    tr = _trainer(tmp_path, model, 2, mixed_precision="bf16")
    summary = tr.train()
    assert all(p.dtype == torch.float32 for p in tr.trainable)
    assert model.pos_embed.proj.weight.dtype == torch.bfloat16  # frozen weights stored in the compute dtype
    assert torch.isfinite(torch.tensor(summary["final"]["loss"]))


@pytest.mark.parametrize("bad, match", [({"max_steps": 0}, "max_steps"), ({"mixed_precision": "fp8"}, "mixed"),
                                        ({"learning_rate": 0.0}, "learning_rate")])
def test_config_validation(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(output_dir=str(tmp_path), **bad)


@pytest.mark.parametrize("method, kwargs", [("linfusion", {}), ("neighborhood", {"kernel_size": 3})])
def test_a_baseline_trains_as_a_student_from_the_carried_over_projections(tmp_path, method, kwargs):
    """replace_attention(..., keep_attention=True) puts a baseline in every attn1 slot with the original
    attention as teacher: the trainer trains the baseline's whole layer (its to_q/k/v/out start as the teacher's
    projections), nothing else changes, and the final weights load back."""
    from safetensors.torch import load_file
    from tiny_models import tiny_pixart

    from deltaconv_kernels.distill.models import load_student_state_dict, student_layers
    from deltaconv_kernels.integrations.diffusers import replace_attention

    original = tiny_pixart(seed=0)
    model = tiny_pixart(seed=0)
    torch.manual_seed(5)
    replace_attention(model, method, keep_attention=True, **kwargs)
    layers = student_layers(model)
    assert len(layers) == 2
    for slot in layers.values():
        for proj in ("to_q", "to_k", "to_v"):
            assert torch.equal(getattr(slot.layer, proj).weight, getattr(slot.attention, proj).weight)
    batch = _dataset(model).collate([0, 2])
    t, x = torch.tensor([10, 500]), torch.randn(batch["latents"].shape)
    for m in layers.values():
        m.mode = "teacher"
    with torch.no_grad():
        assert_close(predict(model, x, t, batch), predict(original, x, t, batch), torch.float32)
    for m in layers.values():
        m.mode = "student"
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".layer." not in k}
    before = {k: v.clone() for k, v in student_state_dict(model).items()}
    assert before and all(".layer." in k for k in before)
    summary = _trainer(tmp_path, model, 2, loss=LossWeights(feature=1.0)).train()
    for k, v in model.state_dict().items():
        if ".layer." not in k:
            assert torch.equal(v, frozen[k]), k
    after = student_state_dict(model)
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert any(".to_q." in k for k in changed) and len(changed) >= len(after) // 2
    saved = load_file(summary["weights"])
    assert saved.keys() == after.keys()
    load_student_state_dict(model, before)
    assert torch.equal(student_state_dict(model)[changed[0]], before[changed[0]])
    load_student_state_dict(model, saved)
    assert torch.equal(student_state_dict(model)[changed[0]], after[changed[0]])


def test_a_baseline_without_the_kept_attention_is_refused(tmp_path):
    from tiny_models import tiny_pixart

    from deltaconv_kernels.integrations.diffusers import replace_attention

    model = tiny_pixart(seed=0)
    replace_attention(model, "linfusion")
    with pytest.raises(ValueError, match="keep_attention=True"):
        _trainer(tmp_path, model, 1)
