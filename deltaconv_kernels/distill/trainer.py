"""The distillation loop (paper §4.3, docs/DESIGN.md §6): only the students train (the ΔConvBlocks of `convert`, or the
baseline layers of `replace_attention`, e.g. LinFusion or neighborhood attention, their projections carried over
from the attention they replace); the teacher is the same model with every replaced layer in "teacher" mode (the
kept original attention) run under no_grad, so teacher and student share one copy of the frozen weights.

Reproducibility: the batch, noise and timesteps of step `s` are pure functions of `(seed, s, process)`, and the
checkpoint holds the ΔConvBlock weights, optimizer, LR-schedule, grad-scaler and RNG states, so resuming from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from deltaconv_kernels import fileio
from deltaconv_kernels.distill import checkpointing, losses
from deltaconv_kernels.distill.data import BucketBatchSampler, LatentDataset
from deltaconv_kernels.distill.models import (
    load_student_state_dict,
    predict,
    student_layers,
    student_parameters,
    student_state_dict,
    unwrap_model,
)
from deltaconv_kernels.integrations.diffusers import DeltaConvAttention, save, set_mode
from deltaconv_kernels.integrations.diffusers.files import WEIGHT_FILES

MIXED_PRECISION = ("no", "fp16", "bf16")
# Settings that change the trajectory: resuming with a different value would not continue the same run.
RESUME_KEYS = ("seed", "batch_size", "learning_rate", "weight_decay", "adam_betas", "adam_eps", "warmup_steps",
               "max_grad_norm", "mixed_precision", "loss", "num_processes", "data")
WEIGHTS_DIR = "deltaconv"  # final ΔConvBlock weights (save/load format of the diffusers integration)
STUDENT_WEIGHTS = "student.safetensors"  # final weights of baseline students (`student_state_dict` keys)
HISTORY_FIELDS = ("step", "loss", "output", "feature", "noise", "lr", "grad_norm", "seconds")
# What a run writes into its output folder (an existing one means an earlier run is there).
RUN_FILES = (checkpointing.CHECKPOINT_NAME, "history.csv", "history.json", "loss.png", STUDENT_WEIGHTS)


def check_output_dir_free(output_dir, overwrite: bool) -> list[Path]:
    """The earlier run's files in `output_dir`; refused (ValueError) unless `overwrite`, so that starting again
    without --resume never silently replaces a run's history and checkpoint."""
    out = Path(output_dir)
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    found += [out / WEIGHTS_DIR / n for n in WEIGHT_FILES if (out / WEIGHTS_DIR / n).exists()]
    if found and not overwrite:
        raise ValueError(f"output dir {out} already holds a run ({', '.join(p.name for p in found)}): continue it "
                         "with --resume (train(resume=...)) or start afresh with --overwrite (train(overwrite=True))")
    return found


def remove_interrupted_writes(output_dir) -> None:
    """Delete the temporary files of atomic writes that a killed run left (checkpoint, logs, plot, weights)."""
    out = Path(output_dir)
    fileio.remove_stale_temps(out, (*RUN_FILES, "latents.pt"))
    fileio.remove_stale_temps(out / WEIGHTS_DIR, WEIGHT_FILES)


@dataclass
class DistillConfig:
    output_dir: str
    max_steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    loss: losses.LossWeights = field(default_factory=losses.LossWeights)
    progress: bool = True
    plot: bool = True

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = losses.LossWeights(**self.loss)
        self.adam_betas = tuple(self.adam_betas)
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DistillConfig.{name} must be an int >= 1, got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"DistillConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"DistillConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"DistillConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"DistillConfig.mixed_precision must be one of {MIXED_PRECISION}, "
                             f"got {self.mixed_precision!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def step_seed(seed: int, step: int, process_index: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + process_index * 104_729) % (2**63 - 1)


class FeatureRecorder:
    """Forward hooks on the transformer blocks that hold a converted attn1, recording their outputs (the
    post-residual hidden states) in call order."""

    def __init__(self, model: nn.Module, layer_names: list[str]):
        modules = dict(model.named_modules())
        self.outputs: list[torch.Tensor] = []
        self.handles = [modules[name.rsplit(".", 1)[0]].register_forward_hook(self._hook) for name in layer_names]

    def _hook(self, module, args, output):
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class DistillTrainer:
    """Distils a converted model (`convert(model, ..., keep_attention=True)`) on `dataset`.

    `noise_scheduler` supplies `alphas_cumprod`, `add_noise`, `get_velocity` and `config.prediction_type`.
    `accelerator` defaults to `accelerate.Accelerator(mixed_precision=config.mixed_precision)`, so the same code
    runs on one CPU, one GPU or, under `accelerate launch`, many GPUs (DDP on the trainable blocks).
    """

    def __init__(self, model: nn.Module, noise_scheduler, dataset: LatentDataset, config: DistillConfig,
                 accelerator=None, step_callback=None):
        layers = student_layers(model)
        if not layers:
            raise ValueError(f"{type(unwrap_model(model)).__name__} has no ΔConvBlock layers: convert(model, "
                             "keep_attention=True) (or replace_attention(model, method, keep_attention=True) for a "
                             "baseline student) before distilling")
        without = [n for n, m in layers.items() if m.attention is None]
        if without:
            raise ValueError(f"distillation needs the original attention as teacher, but {len(without)} layers "
                             f"did not keep it (e.g. {without[0]}): convert (or replace_attention) with "
                             "keep_attention=True")
        prediction_type = noise_scheduler.config.prediction_type
        if prediction_type not in losses.PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type {prediction_type!r} is not one of {losses.PREDICTION_TYPES}")
        if accelerator is None:
            from accelerate import Accelerator  # deferred: only the default accelerator needs accelerate

            accelerator = Accelerator(mixed_precision=config.mixed_precision)
        self.accelerator, self.config, self.dataset = accelerator, config, dataset
        self.scheduler, self.prediction_type = noise_scheduler, prediction_type
        self.layer_names = list(layers)
        self.step_callback = step_callback
        self.output_dir = Path(config.output_dir)
        self._prepare_model(model)

    def _prepare_model(self, model: nn.Module) -> None:
        trainable = student_parameters(model)
        trainable_ids = {id(p) for p in trainable}
        weight_dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.config.mixed_precision]
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids)
            if id(p) not in trainable_ids and weight_dtype is not None:
                p.data = p.data.to(weight_dtype)  # frozen weights in the compute dtype; trained ones stay fp32
            elif id(p) in trainable_ids:
                p.data = p.data.float()
        model.eval()  # frozen parts: no dropout, so teacher and student see the same network
        if self.config.gradient_checkpointing:
            if not hasattr(model, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} has no enable_gradient_checkpointing()")
            model.enable_gradient_checkpointing()
        model.to(self.accelerator.device)
        cfg = self.config
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 1.0 if warmup == 0 else min(1.0, (s + 1) / warmup))
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        self.base = unwrap_model(self.model)
        self.trainable = trainable

    # ------------------------------------------------------------------ one step

    def _batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) for k, v in self.dataset.collate(indices).items()}

    def compute_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        acc, weights = self.accelerator, self.config.loss
        gen = torch.Generator().manual_seed(step_seed(self.config.seed, step, acc.process_index))
        latents = batch["latents"].float()
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        num_t = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_t, (latents.shape[0],), generator=gen).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        sample_weights = losses.min_snr_weights(self.scheduler.alphas_cumprod, timesteps, weights.gamma,
                                                self.prediction_type)
        want_hidden = weights.feature > 0 and weights.feature_target == "hidden_states"
        recorder = FeatureRecorder(self.base, self.layer_names) if want_hidden else None
        try:
            set_mode(self.base, "teacher")
            with torch.no_grad(), acc.autocast():
                teacher = predict(self.base, noisy, timesteps, batch)
            teacher_hidden = [t.detach() for t in recorder.take()] if recorder else []
            use_distill = weights.feature > 0 and weights.feature_target == "attn1"
            set_mode(self.base, "distill" if use_distill else "student")
            with acc.autocast():
                student = predict(self.model, noisy, timesteps, batch)
            if use_distill:
                pairs = [m.last_features for m in student_layers(self.base).values()]
            elif recorder:
                pairs = list(zip(recorder.take(), teacher_hidden))
            else:
                pairs = []
        finally:
            if recorder:
                recorder.remove()
            set_mode(self.base, "student")
        target = None
        if weights.noise > 0:
            target = {"epsilon": noise, "sample": latents}.get(self.prediction_type)
            if target is None:
                target = self.scheduler.get_velocity(latents, noise, timesteps)
        return losses.distillation_loss(student, teacher, weights, sample_weights, pairs, target)

    # ------------------------------------------------------------------ the loop

    def train(self, resume: str | Path | None = None, overwrite: bool = False,
              trust_checkpoint: bool = False) -> dict:
        """Run to `config.max_steps`; with `resume` (a checkpoint file or output folder) continue from it. Without
        it, an output folder holding an earlier run is refused unless `overwrite` (which deletes that run's files).
        `trust_checkpoint` lets `resume` read an old-format (pickled) checkpoint, which runs code from the file.
        Returns a summary dict (steps, final losses, output paths)."""
        cfg, acc = self.config, self.accelerator
        run_config = {**cfg.to_dict(), "num_processes": acc.num_processes, "data": self.dataset.fingerprint()}
        start, history = 0, []
        earlier = check_output_dir_free(self.output_dir, overwrite) if resume is None else []
        acc.wait_for_everyone()  # every process has checked before the main one deletes or writes
        if acc.is_main_process:
            remove_interrupted_writes(self.output_dir)
            for path in earlier:
                path.unlink()
        if resume is not None:
            state = checkpointing.load_checkpoint(resume, trust_pickle=trust_checkpoint)
            checkpointing.check_resume_config(state["config"], run_config, RESUME_KEYS)
            load_student_state_dict(self.base, state["trainable"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if state["scaler"] is not None and acc.scaler is not None:
                acc.scaler.load_state_dict(state["scaler"])
            checkpointing.set_rng_state(state["rng"])
            start, history = state["step"], list(state["history"])
            if start > cfg.max_steps:
                raise ValueError(f"checkpoint is at step {start}, beyond max_steps={cfg.max_steps}")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_logs(history)
        sampler = BucketBatchSampler(self.dataset.sizes(), cfg.batch_size, cfg.seed)
        batches = sampler.iterate(start, acc.process_index, acc.num_processes)
        from tqdm.auto import tqdm  # deferred: the optional tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, disable=not (cfg.progress and acc.is_main_process),
                   desc="distill", dynamic_ncols=True)
        t0 = time.time()
        for step in range(start, cfg.max_steps):
            loss, parts = self.compute_loss(self._batch(next(batches)), step)
            acc.backward(loss)
            grad_norm = float("nan")
            if cfg.max_grad_norm is not None and acc.sync_gradients:
                grad_norm = float(acc.clip_grad_norm_(self.trainable, cfg.max_grad_norm))
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                # Loss terms of this process's batch (the main process's are the ones written).
                row = {"step": done, "loss": parts["total"], **{k: parts.get(k, 0.0) for k in
                       ("output", "feature", "noise")}, "lr": self.lr_scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "seconds": time.time() - t0}
                history.append(row)
                bar.set_postfix(loss=f"{parts['total']:.4g}")
                if acc.is_main_process:
                    self._append_csv(row)
            if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                self.save_checkpoint(done, history, run_config)
            if self.step_callback is not None:
                self.step_callback(done)
        bar.close()
        return self._finish(history)

    def save_checkpoint(self, step: int, history: list[dict], run_config: dict) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            checkpointing.save_checkpoint(
                self.output_dir / checkpointing.CHECKPOINT_NAME, step=step,
                trainable=student_state_dict(self.base), optimizer_state=self.optimizer.state_dict(),
                lr_scheduler_state=self.lr_scheduler.state_dict(),
                scaler_state=acc.scaler.state_dict() if acc.scaler is not None else None,
                config=run_config, history=history)
            checkpointing.atomic_write(self.output_dir / "history.json",
                                       lambda f: f.write(json.dumps(history, indent=1).encode()))
        acc.wait_for_everyone()

    def _finish(self, history: list[dict]) -> dict:
        acc = self.accelerator
        summary = {"steps": history[-1]["step"] if history else 0, "final": history[-1] if history else None,
                   "output_dir": str(self.output_dir)}
        if acc.is_main_process:
            # The integration's format: `deltaconv_kernels.integrations.diffusers.load(model, path)` restores it.
            summary["weights"] = str(self._save_weights())
            if self.config.plot and history:
                from deltaconv_kernels.distill.plots import plot_losses  # deferred: it needs the optional matplotlib

                summary["plot"] = str(plot_losses(history, self.output_dir / "loss.png"))
        acc.wait_for_everyone()
        return summary

    def _save_weights(self) -> Path:
        """ΔConvBlock students in the integration's format (`diffusers.load(model, path)` restores them); baseline
        students as one safetensors file of `student_state_dict` (`load_student_state_dict` restores it)."""
        if all(isinstance(m, DeltaConvAttention) for m in student_layers(self.base).values()):
            return save(self.base, self.output_dir / WEIGHTS_DIR)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in student_state_dict(self.base).items()}
        return checkpointing.atomic_write(self.output_dir / STUDENT_WEIGHTS,
                                          lambda f: f.write(safetensors_bytes(tensors)))

    # ------------------------------------------------------------------ logs

    def _write_logs(self, history: list[dict]) -> None:
        """Rewrite the CSV and JSON from `history` (on resume: drops rows logged after the checkpoint)."""
        text = "\n".join([",".join(HISTORY_FIELDS)] + [_csv_row(r) for r in history]) + "\n"
        checkpointing.atomic_write(self.output_dir / "history.csv", lambda f: f.write(text.encode()))
        checkpointing.atomic_write(self.output_dir / "history.json",
                                   lambda f: f.write(json.dumps(history, indent=1).encode()))

    def _append_csv(self, row: dict) -> None:
        with open(self.output_dir / "history.csv", "a") as f:
            f.write(_csv_row(row) + "\n")


def _csv_row(row: dict) -> str:
    return ",".join(f"{row[k]:.8g}" if isinstance(row[k], float) else str(row[k]) for k in HISTORY_FIELDS)
