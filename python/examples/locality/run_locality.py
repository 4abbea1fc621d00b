"""Locality proof: the paper's whole workflow on a teacher trained here, at a token map where locality matters.

1. data: random 32x32 crops (with flips) of the natural images scikit-image ships (`locality_data.SOURCES`);
2. teacher: a class-conditional PixArt transformer (class = source image), patch 2 -> 16x16 token map;
3. `deltaconv analyze` on the trained teacher (real crops noised to each timestep): M(k), M_hp(k), ERF, K;
4. students, all distilled by `DistillTrainer` with the same steps, data, loss and seed: ΔConvBlocks at the
   analysis' K and at K=3, the LinFusion-style and the neighborhood-attention baselines (their projections
   carried over from the teacher's attention, every parameter of theirs trained); ablations: undistilled
   ΔConvBlocks (fresh) and attn1 = 0; also the training-free neighborhood attention (the teacher's own
   projections, windowed);
5. evaluation from the same noise: PSNR vs the teacher's samples, Fréchet distance to real crops in the feature
   space of a source-image classifier trained here, the attn1-output MSE per layer, FLOPs and CPU latency of
   each attention replacement at the 16x16 map;
6. a markdown section (table, plots, grid, command, wall time), optionally put at the end of RESULTS.md.

    pip install .   # the package with its C++ CPU kernels (PYTHONPATH=. also works, on the torch backend)
    python python/examples/locality/run_locality.py --out <out> --plots benchmarks \\
        --results benchmarks/RESULTS.md

`--smoke` runs the same pipeline at toy sizes in well under a minute (a CI test). The teacher and classifier are
cached in --out (delete them to retrain).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from locality_data import SOURCES, SourceClassifier, flip_augment, load_sources, random_crops  # noqa: E402
from locality_init import (  # noqa: E402
    FeatureErrorLog,
    calibration_run,
    install_static_mixing,
    mean_attention,
    paired_difference,
    per_sample_psnr,
)
from proofkit import (  # noqa: E402
    PREDICTION_TYPE,
    ClassEmbedding,
    ZeroOutput,
    build_pixart,
    build_scheduler,
    predict_noise,
    psnr,
    sample,
    save_grid,
    start_run,
    train_classifier,
    train_teacher,
)

from deltaconv_kernels import flops  # noqa: E402
from deltaconv_kernels.bench.timing import interleaved  # noqa: E402
from deltaconv_kernels.distill.data import LatentDataset  # noqa: E402
from deltaconv_kernels.distill.evaluation import extract, frechet_distance  # noqa: E402
from deltaconv_kernels.distill.losses import LossWeights  # noqa: E402
from deltaconv_kernels.distill.models import student_layers  # noqa: E402
from deltaconv_kernels.distill.plots import plot_losses  # noqa: E402
from deltaconv_kernels.distill.trainer import DistillConfig, DistillTrainer  # noqa: E402
from deltaconv_kernels.integrations.diffusers import convert, replace_attention  # noqa: E402
from deltaconv_kernels.ops.registry import resolve  # noqa: E402

CAPTION_CHANNELS, PROMPT_TOKENS = 32, 2
FULL = dict(short_side=64, crop=32, pool=8192, clf_pool=6000, hidden=64, layers=4, heads=4, teacher_steps=1500,
            teacher_batch=32, teacher_lr=1e-3, teacher_seconds=900.0, clf_epochs=6, analysis_crops=24,
            analysis_queries=64, analysis_timesteps="999,750,500,250,50", distill_steps=150, distill_batch=32,
            distill_lr=1e-3, samples=144, sample_steps=20, real_crops=2000, feature_crops=48, latency_batch=32,
            latency_rounds=20, linfusion=1)
SMOKE = dict(short_side=40, crop=32, pool=64, clf_pool=64, hidden=16, layers=2, heads=2, teacher_steps=3,
             teacher_batch=4, teacher_lr=1e-3, teacher_seconds=20.0, clf_epochs=1, analysis_crops=2,
             analysis_queries=8, analysis_timesteps="999,50", distill_steps=2, distill_batch=4, distill_lr=1e-3,
             samples=8, sample_steps=2, real_crops=64, feature_crops=4, latency_batch=2, latency_rounds=2, linfusion=1)
TEACHER_ROW = "teacher (self-attention)"
INITS = ("random", "attention", "attention+fit")  # how the ΔConv students start (docs/DESIGN.md §10)
FEATURE_STEPS = (20, 60, 150)  # besides 0 and the last step: when the students' feature error is measured
# The teacher of the init measurement (benchmarks/RESULTS.md), trained by
#   python python/examples/locality/run_locality.py --teacher-only --out <work folder> \
#       --set teacher_steps=400 --set teacher_batch=16 --set teacher_seconds=1500
# and copied from <work folder>/teacher.pt; used when its key matches the run's configuration.
CACHED_TEACHER = Path(__file__).resolve().parent / "cached_teacher.pt"
CACHED_TEACHER_SETTINGS = ("teacher_steps=400", "teacher_batch=16", "teacher_seconds=1500")
PLOT_NAMES = ("mass.png", "mass_highpass.png", "erf.png", "attention_maps.png")


def arch(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("crop", "hidden", "layers", "heads")}


def build_teacher(cfg: dict):
    return build_pixart(3, cfg["crop"], cfg["hidden"], cfg["layers"], cfg["heads"], CAPTION_CHANNELS)


def teacher_key(cfg: dict) -> dict:
    """What a cached teacher must have been trained with to be reused."""
    return {**arch(cfg), **{k: cfg[k] for k in ("teacher_steps", "teacher_batch", "teacher_lr", "pool")},
            "prediction_type": PREDICTION_TYPE}


def get_teacher(out: Path, crops, labels, cfg: dict, log):
    """The teacher cached in `out`, else the one cached in the repository (`CACHED_TEACHER`) when its key matches
    the configuration, else a freshly trained one (cached in `out`)."""
    path = out / "teacher.pt"
    key = teacher_key(cfg)
    build_embed = lambda: ClassEmbedding(len(SOURCES), PROMPT_TOKENS, CAPTION_CHANNELS)  # noqa: E731
    for cached in (path, CACHED_TEACHER):
        if not cached.is_file():
            continue
        state = torch.load(cached, map_location="cpu", weights_only=True)
        if state["key"] == key:
            model, embed = build_teacher(cfg), build_embed()
            model.load_state_dict(state["model"])
            embed.load_state_dict(state["embed"])
            log(f"teacher: reused {cached.name}" + (" (cached in the repository)" if cached == CACHED_TEACHER else ""))
            return model.eval().requires_grad_(False), embed.eval().requires_grad_(False), \
                {**state["info"], "reused": True}
    model, embed, info = train_teacher(lambda: build_teacher(cfg), build_embed, crops, labels,
                                       steps=cfg["teacher_steps"], batch=cfg["teacher_batch"], lr=cfg["teacher_lr"],
                                       max_seconds=cfg["teacher_seconds"],
                                       log_every=1 if cfg["teacher_steps"] < 50 else 50,
                                       augment=flip_augment)
    torch.save({"key": key, "model": model.state_dict(), "embed": embed.state_dict(), "info": info}, path)
    log(f"teacher: trained {info['steps']} steps in {info['seconds']:.0f}s, final loss {info['final_loss']:.4f}")
    return model, embed, info


def get_classifier(out: Path, sources, cfg: dict, seed: int, log):
    path = out / "classifier.pt"
    key = {k: cfg[k] for k in ("short_side", "crop", "clf_pool", "clf_epochs")}
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["key"] == key:
            clf = SourceClassifier(len(SOURCES), cfg["crop"])
            clf.load_state_dict(state["model"])
            log(f"classifier: reused {path} (held-out accuracy {state['accuracy']:.4f})")
            return clf.eval().requires_grad_(False), state["accuracy"]
    t0 = time.time()
    crops, labels = random_crops(sources, cfg["clf_pool"], cfg["crop"], seed=seed + 2)
    clf, acc = train_classifier(lambda: SourceClassifier(len(SOURCES), cfg["crop"]), crops, labels,
                                epochs=cfg["clf_epochs"], augment=flip_augment, seed=seed)
    torch.save({"key": key, "model": clf.state_dict(), "accuracy": acc}, path)
    log(f"classifier: trained in {time.time() - t0:.0f}s, held-out accuracy {acc:.4f}")
    return clf, acc


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    return scheduler.add_noise(x0, noise, torch.full((x0.shape[0],), t, dtype=torch.long))


def run_analysis(out: Path, teacher, embed, crops, labels, cfg: dict, seed: int, log) -> dict:
    """`deltaconv analyze` (the CLI, in-process) on the teacher saved as a diffusers folder, fed real crops
    noised to each analysed timestep with their class embeddings."""
    from deltaconv_kernels.cli import main as deltaconv_main

    folder = out / "teacher_diffusers"
    teacher.save_pretrained(folder / "transformer")
    build_scheduler().save_pretrained(folder / "scheduler")
    timesteps = [int(t) for t in cfg["analysis_timesteps"].split(",")]
    gen = torch.Generator().manual_seed(seed + 3)
    pick = torch.randperm(crops.shape[0], generator=gen)[:cfg["analysis_crops"]]
    x0 = crops[pick]
    noise = torch.randn(x0.shape, generator=gen)
    scheduler = build_scheduler()
    with torch.no_grad():
        inputs = {"latents": {t: noised(scheduler, x0, noise, t) for t in timesteps},
                  "encoder_hidden_states": embed(labels[pick])}
    torch.save(inputs, out / "analysis_inputs.pt")
    argv = ["analyze", "--model", str(folder), "--inputs", str(out / "analysis_inputs.pt"), "--out",
            str(out / "analysis"), "--timesteps", cfg["analysis_timesteps"], "--num-queries",
            str(cfg["analysis_queries"]), "--seed", str(seed), "--no-progress"]
    t0 = time.time()
    if deltaconv_main(argv) != 0:
        raise RuntimeError("deltaconv " + " ".join(argv) + " failed")
    log(f"analysis: {time.time() - t0:.1f}s")
    return json.loads((out / "analysis" / "analysis.json").read_text()), inputs


def distill(name: str, student, dataset, cfg: dict, out: Path, seed: int, log, step_callback=None) -> dict:
    dcfg = DistillConfig(output_dir=str(out / "distill" / name), max_steps=cfg["distill_steps"],
                         batch_size=cfg["distill_batch"], learning_rate=cfg["distill_lr"],
                         warmup_steps=max(1, cfg["distill_steps"] // 20), checkpoint_every=cfg["distill_steps"],
                         log_every=5, seed=seed, progress=False, plot=False,
                         loss=LossWeights(output=1.0, feature=1.0, noise=0.0))
    t0 = time.time()
    summary = DistillTrainer(student, build_scheduler(), dataset, dcfg, step_callback=step_callback).train(
        overwrite=True)
    seconds = time.time() - t0
    log(f"distilled {name}: {summary['steps']} steps in {seconds:.0f}s, final {summary['final']['loss']:.4f}")
    return {"seconds": seconds, "final": summary["final"]}


def set_modes(model, mode: str) -> None:
    for layer in student_layers(model).values():
        layer.mode = mode


def generate(model, cond, noise, cfg, mode="student", zero=False):
    set_modes(model, mode)
    hooks = [m.register_forward_hook(ZeroOutput()) for m in student_layers(model).values()] if zero else []
    try:
        return sample(model, cond, noise, steps=cfg["sample_steps"])
    finally:
        for h in hooks:
            h.remove()
        set_modes(model, "student")


@torch.no_grad()
def feature_errors(model, x_t, t, cond, zero=False) -> dict[str, float]:
    """Per layer: MSE between the replacement's output and the teacher attention's output on the same input
    (the student's own hidden states), relative to the teacher output's mean square. attn1 = 0 outputs zeros."""
    layers = student_layers(model)
    set_modes(model, "distill")
    hooks = [m.register_forward_hook(ZeroOutput()) for m in layers.values()] if zero else []
    try:
        predict_noise(model, x_t, t, cond)
        errors = {}
        for name, m in layers.items():
            s, teacher = m.last_features
            s = torch.zeros_like(s) if zero else s
            errors[name] = float((s - teacher).pow(2).mean() / teacher.pow(2).mean())
    finally:
        for h in hooks:
            h.remove()
        set_modes(model, "student")
    return errors


def latency_ms(layer, x, size, rounds: int) -> float:
    with torch.no_grad():
        call = (lambda: layer(x)) if size is None else (lambda: layer(x, size=size))
        return 1e3 * interleaved({"layer": call}, rounds, warmup=3)["layer"].median


def cost_rows(teacher, students: dict, kernel_sizes: dict, nb_kernels: dict, cfg: dict) -> dict:
    """FLOPs (`deltaconv_kernels.flops`, per image) and CPU latency (median ms of a layer call on a
    [latency_batch, 256, C] input) of each attention replacement at the token map, both summed over the layers."""
    h = w = cfg["crop"] // 2
    c, heads = cfg["hidden"], cfg["heads"]
    names = list(kernel_sizes)
    x = torch.randn(cfg["latency_batch"], h * w, c)
    rounds = cfg["latency_rounds"]
    rows = {TEACHER_ROW: {"flops": sum(flops.sdpa(h, w, c, batch=1).total for _ in names),
                          "ms": sum(latency_ms(teacher.get_submodule(n), x, None, rounds) for n in names)}}
    for label, (kind, model) in students.items():
        ms = sum(latency_ms(model.get_submodule(n).student, x, (h, w), rounds) for n in names)
        if kind == "deltaconv":
            blocks = {n: model.get_submodule(n).block for n in names}
            f = sum(flops.deltaconv(h, w, c, b.kernel_size, b.scales, b.inter_ratio, batch=1).total
                    for b in blocks.values())
        elif kind == "linfusion":
            f = sum(flops.linfusion(h, w, c, heads, batch=1).total for _ in names)
        else:
            f = sum(flops.neighborhood(h, w, c, nb_kernels[n], batch=1).total for n in names)
        rows[label] = {"flops": f, "ms": ms}
    return rows


def configure(smoke: bool, overrides: list[str]) -> dict:
    """FULL (or SMOKE) with `KEY=VALUE` overrides (a reduced run says what it reduced: `metrics["reduced"]`)."""
    base = SMOKE if smoke else FULL
    cfg = dict(base)
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in base or not value:
            raise SystemExit(f"run_locality.py: error: --set {item!r}: expected KEY=VALUE, KEY one of {sorted(base)}")
        cfg[key] = type(base[key])(value)
    return cfg


def run(out: Path, smoke: bool = False, threads: int = 1, plots: Path | None = None, results: Path | None = None,
        seed: int = 0, command: str | None = None, overrides: list[str] = (), teacher_only: bool = False,
        title: str = "Locality proof") -> dict:
    cfg = configure(smoke, list(overrides))
    t_start, log = start_run(out, threads)

    sources = load_sources(cfg["short_side"])
    crops, labels = random_crops(sources, cfg["pool"], cfg["crop"], seed=seed + 1)
    log(f"data: {len(sources)} sources, {crops.shape[0]} crops of {cfg['crop']}x{cfg['crop']}")
    teacher, embed, teacher_info = get_teacher(out, crops, labels, cfg, log)
    clf, clf_acc = get_classifier(out, sources, cfg, seed, log)
    if teacher_only:
        return {"teacher": teacher_info, "classifier_accuracy": clf_acc}
    analysis, analysis_inputs = run_analysis(out, teacher, embed, crops, labels, cfg, seed, log)
    k_star = analysis["kernel_sizes"]
    calibration = calibration_run(analysis_inputs)  # the analysis' crops and timesteps: the init's calibration

    with torch.no_grad():
        dataset = LatentDataset(list(crops), list(embed(labels)), source="skimage crops")
    gen = torch.Generator().manual_seed(seed + 4)
    n = cfg["samples"]
    noise = torch.randn(n, 3, cfg["crop"], cfg["crop"], generator=gen)
    sample_labels = torch.arange(n) % len(SOURCES)
    # Per-layer feature error on real crops noised at spread timesteps, the same noise for every variant.
    fc = cfg["feature_crops"]
    pick = torch.randperm(crops.shape[0], generator=gen)[:fc]
    t_feat = torch.linspace(50, 950, fc).round().long()
    x_feat = build_scheduler().add_noise(crops[pick], torch.randn(crops[pick].shape, generator=gen), t_feat)
    with torch.no_grad():
        c_feat = embed(labels[pick])
    measure = lambda m: feature_errors(m, x_feat, t_feat, c_feat)  # noqa: E731
    feature_steps = sorted({0, *(s for s in FEATURE_STEPS if s < cfg["distill_steps"]), cfg["distill_steps"]})
    students, train_info, untrained, by_step, init_records = {}, {}, {}, {}, {}

    def student(label, kind, make, train=True):
        model = copy.deepcopy(teacher)
        torch.manual_seed(seed + 10)  # every fresh student module starts from the same seed
        report = make(model)
        if getattr(report, "init", None):
            init_records[label] = report.init
        if train:
            slug = "".join(ch if ch.isalnum() else "_" for ch in label)  # one folder per student
            log_errors = FeatureErrorLog(model, measure, feature_steps)
            log_errors.record(0)
            untrained[label] = copy.deepcopy(model)
            train_info[label] = distill(slug, model, dataset, cfg, out, seed, log, log_errors)
            by_step[label] = log_errors.errors
        students[label] = (kind, model)
        return model

    ks = sorted(set(k_star.values()))
    k_label = "/".join(str(k) for k in ks)
    label_k = f"ΔConv K={k_label} (analysis)"
    deltaconv_labels = {}
    for sizes, base in ((k_star, label_k), (3, "ΔConv K=3")):
        for init in INITS:
            label = base if init == "random" else f"{base}, init {init}"
            deltaconv_labels[(base, init)] = label
            student(label, "deltaconv", lambda m, sizes=sizes, init=init: convert(
                m, kernel_sizes=sizes, keep_attention=True, init=init,
                calibration=None if init == "random" else calibration))
            log(f"{label}: feature error by step {by_step[label]}")
    if cfg["linfusion"]:
        student("LinFusion-style", "linfusion", lambda m: replace_attention(m, "linfusion", keep_attention=True))

    def neighborhood(m):
        replace_attention(m, "neighborhood", keep_attention=True)
        for name, slot in student_layers(m).items():  # the analysis' window, layer by layer
            slot.layer.kernel_size = k_star[name]
    label_nb = f"neighborhood K={k_label}"
    student(label_nb, "neighborhood", neighborhood)
    label_nb0 = f"neighborhood K={k_label}, training-free"
    student(label_nb0, "neighborhood", neighborhood, train=False)
    label_static = "best static mixing (per-head mean attention, teacher's W_v/W_o)"
    static = copy.deepcopy(teacher)
    install_static_mixing(static, mean_attention(teacher, calibration))

    with torch.no_grad():
        cond = embed(sample_labels)
    variants = {TEACHER_ROW: sample(teacher, cond, noise, steps=cfg["sample_steps"])}
    for label, (_, model) in students.items():
        variants[label] = generate(model, cond, noise, cfg)
    label_fresh, label_zero = f"undistilled ΔConv K={k_label} (fresh)", "attn1 = 0"
    fresh = untrained[label_k]
    untrained_rows = {label_fresh: fresh}
    for init in INITS[1:]:
        untrained_rows[f"undistilled ΔConv K={k_label}, init {init}"] = untrained[deltaconv_labels[(label_k, init)]]
    untrained_rows[label_static] = static
    for label, model in untrained_rows.items():
        variants[label] = generate(model, cond, noise, cfg)
    variants[label_zero] = generate(fresh, cond, noise, cfg, zero=True)
    log("sampled all variants")

    feats = {label: measure(model) for label, (_, model) in students.items()}
    feats.update({label: measure(model) for label, model in untrained_rows.items()})
    feats[label_zero] = feature_errors(fresh, x_feat, t_feat, c_feat, zero=True)

    costs = cost_rows(teacher, {**{k: v for k, v in students.items() if k != label_nb0}}, k_star, k_star, cfg)
    costs[label_nb0] = costs[label_nb]
    for label in untrained_rows:
        if label != label_static:
            costs[label] = costs[label_k]
    costs[label_static] = {"flops": None, "ms": None}
    costs[label_zero] = {"flops": 0.0, "ms": 0.0}
    log("measured feature errors, FLOPs and latency")

    real_crops, _ = random_crops(sources, cfg["real_crops"], cfg["crop"], seed=seed + 5)
    real_feats = extract(clf.features, real_crops)
    reference = variants[TEACHER_ROW]
    per_sample = {label: per_sample_psnr(imgs, reference) for label, imgs in variants.items() if imgs is not reference}
    paired = []
    for base in (label_k, "ΔConv K=3"):
        for a, b in (("attention", "random"), ("attention+fit", "random"), ("attention+fit", "attention")):
            la, lb = deltaconv_labels[(base, a)], deltaconv_labels[(base, b)]
            paired.append({"students": base, "a": a, "b": b, **paired_difference(per_sample[la], per_sample[lb])})
    rows = []
    for label, imgs in variants.items():
        f = extract(clf.features, imgs)
        per_layer = feats.get(label)
        rows.append({
            "variant": label, "trained": label in train_info,
            "psnr_vs_teacher": math.inf if imgs is reference else psnr(imgs, reference),
            "frechet_to_real": frechet_distance(f, real_feats),
            "class_accuracy": float((clf.head(f).argmax(1) == sample_labels).float().mean()),
            "feature_rel_mse": None if per_layer is None else statistics.fmean(per_layer.values()),
            "feature_rel_mse_per_layer": per_layer, "feature_rel_mse_by_step": by_step.get(label),
            "flops_per_image": costs[label]["flops"], "latency_ms": costs[label]["ms"]})
    by = {r["variant"]: r for r in rows}
    real_split, _ = random_crops(sources, n, cfg["crop"], seed=seed + 6)  # as many as the samples: the floor
    layers = analysis["layers"]
    map_side = cfg["crop"] // 2
    checks = {
        "erf_below_map": all((v["erf"] or 2 * map_side) < map_side for v in layers.values()),
        "k_star_beats_k3_and_ablations": all(
            by[label_k]["psnr_vs_teacher"] >= by[o]["psnr_vs_teacher"] and
            by[label_k]["frechet_to_real"] <= by[o]["frechet_to_real"]
            for o in ("ΔConv K=3", label_fresh, label_zero)),
        "attention_init_beats_random_at_both_k": all(p["mean"] > 0 for p in paired if p["b"] == "random"),
    }
    metrics = {
        "rows": rows, "config": cfg, "threads": threads, "seed": seed, "sources": list(SOURCES),
        "teacher": teacher_info, "classifier_accuracy": clf_acc,
        "real_vs_real_frechet": frechet_distance(extract(clf.features, real_split), real_feats),
        "analysis": {"kernel_sizes": k_star, "layers": {
            n: {"hw": [v["H"], v["W"]], "erf": v["erf"], "erf_hp": v["erf_hp"],
                "kernel_size": v["recommended_kernel_size"], "M": v["M"]} for n, v in layers.items()}},
        "distill": train_info, "checks": checks, "command": command, "paired_psnr": paired,
        "init_records": init_records, "feature_steps": feature_steps,
        "reduced": {k: v for k, v in cfg.items() if not smoke and v != FULL[k]},
        "deltaconv_backend": resolve(next(iter(student_layers(fresh).values())).block.backend, "cpu"),
        "total_seconds": time.time() - t_start}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        for name in PLOT_NAMES:
            if (out / "analysis" / name).is_file():
                shutil.copyfile(out / "analysis" / name, plots / f"locality_{name}")
        columns = min(n, len(SOURCES))
        real_row = torch.cat([random_crops([sources[j]], 1, cfg["crop"], seed=seed + 7)[0] for j in range(columns)])
        save_grid({"real crops (column j: source image j)": real_row, **variants}, plots / "locality_grid.png",
                  per_row=columns)
        if teacher_info.get("curve"):
            plot_losses([{"step": s, "loss": v} for s, v in teacher_info["curve"]], plots / "locality_teacher_loss.png",
                        title="locality teacher: Min-SNR-weighted v-prediction loss")
    if results is not None:
        write_results(results, metrics, plots, title)
    log(f"done in {metrics['total_seconds']:.0f}s: checks {checks}")
    return metrics


def _fmt(v, spec):
    return "—" if v is None or (isinstance(v, float) and math.isinf(v)) else format(v, spec)


def section(m: dict, plots: Path | None, title: str = "Locality proof") -> str:
    cfg, t, a = m["config"], m["teacher"], m["analysis"]
    side = cfg["crop"] // 2
    lines = [
        f"## {title}",
        "",
        f"The paper's workflow on a teacher trained here, at a {side}x{side} token map. Data: random "
        f"{cfg['crop']}x{cfg['crop']} crops with flips of the {len(m['sources'])} images of `skimage.data` whose files "
        f"ship in the package ({', '.join(m['sources'])}; grey ones replicated to RGB, each resized to a "
        f"{cfg['short_side']} px short side; nothing downloaded). Teacher: `PixArtTransformer2DModel` (hidden "
        f"{cfg['hidden']}, {cfg['layers']} layers, {cfg['heads']} heads, patch 2, conditioned on the source image "
        f"through 2 class tokens, {PREDICTION_TYPE}, Min-SNR-5), {t['steps']} steps of batch {cfg['teacher_batch']} "
        f"in {t['seconds']:.0f} s (final loss {t['final_loss']:.4f}"
        + (", reused from the cache" if t.get("reused") else "") + ").",
        "",
        f"**Analysis** (`deltaconv analyze --model <teacher folder> --inputs <real crops noised to each timestep>`, "
        f"timesteps {cfg['analysis_timesteps']}, {cfg['analysis_crops']} crops, {cfg['analysis_queries']} queries per "
        "layer; ERF = smallest k with M(k) >= 0.8; K = nearest odd to 0.6 ERF, at least 3):",
        "",
        "| layer | map | ERF (M) | ERF (M_hp) | K |",
        "|---|---|---|---|---|",
    ]
    for name, v in a["layers"].items():
        lines.append(f"| {name} | {v['hw'][0]}x{v['hw'][1]} | {v['erf']} | {v['erf_hp']} | {v['kernel_size']} |")
    d = cfg
    lines += [
        "",
        f"**Students**, each distilled by `DistillTrainer` with the same {d['distill_steps']} steps, batch "
        f"{d['distill_batch']}, lr {d['distill_lr']}, seed {m['seed']}, data (the teacher's {cfg['pool']} training "
        "crops and their class embeddings) and loss (Min-SNR-5-weighted output MSE + attn1 feature MSE, λ=1). The "
        "baselines carry the teacher's q/k/v/out projections over and train all their parameters (LinFusion-style "
        "also its fresh φ branches); neighborhood attention uses the analysis' K per layer (reference "
        f"implementation, NATTEN is not installed). {d['samples']} samples per row, DDIM {d['sample_steps']} steps "
        "from the same noise and classes. Fréchet distance: 32-d penultimate features of a CNN trained here to "
        f"tell the source image of a crop (held-out accuracy {m['classifier_accuracy']:.3f} over "
        f"{len(m['sources'])} classes), against {d['real_crops']} fresh real crops ({d['samples']} other real crops "
        f"score {m['real_vs_real_frechet']:.2f}: the floor at this sample count). Class accuracy: that "
        "classifier's agreement with the requested source. Feature error: per layer MSE(replacement output, "
        "teacher attention output on the same input) / "
        f"mean(teacher output²), mean over layers, on {d['feature_crops']} real crops noised at t = 50..950. "
        f"Cost, summed over the {cfg['layers']} layers: FLOPs per image (`deltaconv_kernels.flops`, batch 1) and the "
        f"median CPU latency of a layer call on a [{d['latency_batch']}, {side * side}, {cfg['hidden']}] input "
        f"(ΔConvBlock backend `{m['deltaconv_backend']}`, torch threads {m['threads']}).",
        "",
        "| variant | trained | PSNR vs teacher (dB) ↑ | Fréchet to real ↓ | class acc. ↑ | feature error ↓ | "
        f"MFLOPs / image | CPU ms ({cfg['layers']} layers) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        lines.append(f"| {r['variant']} | {'yes' if r['trained'] else 'no'} | {_fmt(r['psnr_vs_teacher'], '.2f')} | "
                     f"{r['frechet_to_real']:.2f} | {r['class_accuracy']:.3f} | {_fmt(r['feature_rel_mse'], '.4f')} | "
                     f"{_fmt(r['flops_per_image'] and r['flops_per_image'] / 1e6, '.2f')} | "
                     f"{_fmt(r['latency_ms'], '.3f')} |")
    steps = m["feature_steps"]
    lines += [
        "",
        "**Initialisation** (docs/DESIGN.md §10): `convert(model, init=..., calibration=<the analysis' crops at its "
        "timesteps>)`. random: kaiming, as released (the rows without 'init'); attention: the closed form from each "
        "layer's mean relative attention pattern (head-averaged, sampled queries), input second moment and W_o W_v; "
        "attention+fit: that plus the ridge least-squares fit of proj_out and pool_proj to the teacher's attn1 "
        "outputs, layer by layer (step 0). Same seed, data, steps and loss for every student. The 'best static "
        "mixing' row replaces attn1 by each head's mean attention matrix over the calibration inputs applied to the "
        "teacher's own values (W_v, W_o): the ceiling of input-independent spatial mixing in that sense; untrained.",
        "",
        "Feature error (as above) while distilling, mean over layers:",
        "",
        "| student | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for r in m["rows"]:
        if r.get("feature_rel_mse_by_step"):
            e = {int(k): v for k, v in r["feature_rel_mse_by_step"].items()}
            lines.append(f"| {r['variant']} | " + " | ".join(_fmt(e.get(s), ".4f") for s in steps) + " |")
    lines += [
        "",
        f"Paired PSNR differences vs the teacher's samples (a − b, dB, mean ± standard error over the "
        f"{m['config']['samples']} samples, same noise and class; wins = samples where a is closer):",
        "",
        "| students | a | b | a − b (dB) | wins |",
        "|---|---|---|---|---|",
    ]
    for p in m["paired_psnr"]:
        lines.append(f"| {p['students']} | init {p['a']} | init {p['b']} | {p['mean']:+.2f} ± {p['stderr']:.2f} | "
                     f"{p['wins']}/{p['n']} |")
    c = m["checks"]
    lines += [
        "",
        f"Teacher ERF below the {side}x{side} map in every layer: **{'yes' if c['erf_below_map'] else 'NO'}**. "
        f"ΔConv at the analysis' K at least as close to the teacher (PSNR) and to the real crops (Fréchet) as "
        f"ΔConv K=3, undistilled ΔConv and attn1 = 0: **{'yes' if c['k_star_beats_k3_and_ablations'] else 'NO'}**. "
        f"Attention init (with and without fit) closer to the teacher than random init at both K (paired mean): "
        f"**{'yes' if c['attention_init_beats_random_at_both_k'] else 'NO'}**.",
        "",
    ]
    if m.get("reduced"):
        lines += ["**Reduced run** (the full configuration did not fit the time on a shared 2-core machine): "
                  + ", ".join(f"{k} = {v} (full: {FULL[k]})" for k, v in m["reduced"].items()) + ".", ""]
    if plots is not None:
        lines += ["![teacher and students, same noise, one column per source image](locality_grid.png)", "",
                  "![teacher loss](locality_teacher_loss.png) ![ERF and K per layer](locality_erf.png)", "",
                  "![M(k)](locality_mass.png)", "", "![M_hp(k)](locality_mass_highpass.png)", "",
                  "![attention maps](locality_attention_maps.png)", ""]
    lines += [f"Command (whole run, teacher and classifier trained from scratch: {m['total_seconds']:.0f} s wall"
              + (", teacher reused from the cache" if t.get("reused") else "") + "):", "",
              f"    {m['command']}", ""]
    return "\n".join(lines)


def write_results(path: Path, m: dict, plots: Path | None, title: str = "Locality proof") -> None:
    """Put the section at the end of `path`, replacing an earlier section of the same title."""
    text = path.read_text() if path.is_file() else ""
    marker = f"\n## {title}\n"
    if marker in "\n" + text:
        head, _, tail = ("\n" + text).partition(marker)
        rest = tail.split("\n## ", 1)
        text = (head + ("\n## " + rest[1] if len(rest) > 1 else "")).lstrip("\n")
    text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section(m, plots, title)
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/deltaconv_locality"), help="work folder (caches)")
    p.add_argument("--plots", type=Path, default=None, help="write the PNGs (locality_*.png) here")
    p.add_argument("--results", type=Path, default=None, help="put the markdown section at the end of this file")
    p.add_argument("--title", default="Locality proof", help="the section's title (an earlier section of that "
                   "title is replaced)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: on the shared 2-core "
                   "machine one thread ran these small models several times faster than two)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="toy sizes, for CI")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one entry of the configuration (a reduced run; repeatable)")
    p.add_argument("--teacher-only", action="store_true", help="train (or check) the cached teacher and classifier, "
                   "then stop")
    a = p.parse_args(argv)
    command = "python python/examples/locality/run_locality.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    run(a.out, a.smoke, a.threads, a.plots, a.results, a.seed, command, a.set, a.teacher_only, a.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
