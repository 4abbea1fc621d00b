"""Training data for distillation: latents + prompt embeddings from a file, from a folder of images with `.txt`
captions (encoded once by a VAE and a text encoder), or random tensors for smoke runs; plus aspect-ratio
buckets and a deterministic, resumable batch order."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Per-sample conditioning a file may carry besides prompt_embeds, passed to SDXL-style U-Nets as added_cond_kwargs.
ADDED_KEYS = ("text_embeds", "time_ids")


class LatentDataset:
    """Per-sample `latents [C, H, W]` (already scaled for the denoiser), `prompt_embeds [L, D]` and optional
    added conditioning. Latents of different sizes are allowed (they are batched by size: aspect-ratio buckets)."""

    def __init__(self, latents, prompt_embeds, added: dict[str, torch.Tensor] | None = None, source: str = "data"):
        latents = list(latents)
        prompt_embeds = list(prompt_embeds)
        if not latents:
            raise ValueError(f"{source}: no samples")
        if len(latents) != len(prompt_embeds):
            raise ValueError(f"{source}: {len(latents)} latents but {len(prompt_embeds)} prompt_embeds")
        for i, lat in enumerate(latents):
            if not isinstance(lat, torch.Tensor) or lat.dim() != 3 or not lat.is_floating_point():
                raise ValueError(f"{source}: latents[{i}] must be a float [C, H, W] tensor, got "
                                 f"{getattr(lat, 'shape', type(lat))}")
        for i, emb in enumerate(prompt_embeds):
            if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
                raise ValueError(f"{source}: prompt_embeds[{i}] must be a [L, D] tensor, got "
                                 f"{getattr(emb, 'shape', type(emb))}")
        if len({tuple(e.shape) for e in prompt_embeds}) != 1:
            raise ValueError(f"{source}: prompt_embeds must all have one shape [L, D], got "
                             f"{sorted({tuple(e.shape) for e in prompt_embeds})[:4]}")
        if len({lat.shape[0] for lat in latents}) != 1:
            raise ValueError(f"{source}: latents must all have the same channel count")
        added = dict(added or {})
        for key, value in added.items():
            if key not in ADDED_KEYS:
                raise ValueError(f"{source}: unknown key {key!r}; extra conditioning keys are {ADDED_KEYS}")
            if len(value) != len(latents):
                raise ValueError(f"{source}: {key} has {len(value)} rows but there are {len(latents)} latents")
        self.latents, self.prompt_embeds, self.added = latents, prompt_embeds, added

    def __len__(self) -> int:
        return len(self.latents)

    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(lat.shape[-2:]) for lat in self.latents]

    def fingerprint(self) -> dict:
        """What identifies the data of a run (resuming on other data is refused): sample count, the latent
        shapes, the prompt shape, the extra keys and a SHA-256 of every tensor's bytes."""
        digest = hashlib.sha256()
        tensors = [*self.latents, *self.prompt_embeds, *(torch.as_tensor(v) for k in sorted(self.added)
                                                       for v in self.added[k])]
        for t in tensors:
            t = t.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        shapes = sorted({tuple(lat.shape) for lat in self.latents})
        return {"samples": len(self), "latent_shapes": [list(s) for s in shapes],
                "prompt_shape": list(self.prompt_embeds[0].shape), "added": sorted(self.added),
                "sha256": digest.hexdigest()}

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        shapes = {tuple(self.latents[i].shape) for i in indices}
        if len(shapes) != 1:
            raise ValueError(f"a batch mixes latent shapes {sorted(shapes)}: use the bucket sampler")
        batch = {"latents": torch.stack([self.latents[i] for i in indices]),
                 "prompt_embeds": torch.stack([self.prompt_embeds[i] for i in indices])}
        for key, value in self.added.items():
            batch[key] = torch.stack([torch.as_tensor(value[i]) for i in indices])
        return batch

    def save(self, path: str | Path) -> None:
        from deltaconv_kernels.fileio import atomic_write

        state = {"latents": self.latents, "prompt_embeds": torch.stack(self.prompt_embeds), **self.added}
        atomic_write(path, lambda f: torch.save(state, f))


def load_latents_file(path: str | Path) -> LatentDataset:
    """A `.pt` / `.safetensors` file with `latents` ([N, C, H, W] or, in `.pt`, a list of [C, H, W] of mixed sizes),
    `prompt_embeds` [N, L, D] and optionally `text_embeds` [N, D'] and `time_ids` [N, 6] (SDXL)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"latents file {path} could not be read as a torch file: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"latents file {path} must hold a dict, got {type(state).__name__}")
    missing = [k for k in ("latents", "prompt_embeds") if k not in state]
    if missing:
        raise ValueError(f"latents file {path} lacks {missing}; it has keys {sorted(state)}")
    added = {k: state[k] for k in ADDED_KEYS if k in state}
    unknown = sorted(set(state) - {"latents", "prompt_embeds", *ADDED_KEYS})
    if unknown:
        raise ValueError(f"latents file {path} has unknown keys {unknown}")
    return LatentDataset(state["latents"], state["prompt_embeds"], added, source=str(path))


def random_dataset(num_samples: int, channels: int, sizes: list[tuple[int, int]], prompt_len: int,
                   prompt_dim: int, seed: int = 0, added_dims: dict[str, int] | None = None) -> LatentDataset:
    """Deterministic random latents/prompts for smoke runs; samples cycle through `sizes` (several sizes
    exercise the buckets)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gen = torch.Generator().manual_seed(seed)
    latents = [torch.randn(channels, *sizes[i % len(sizes)], generator=gen) for i in range(num_samples)]
    prompts = torch.randn(num_samples, prompt_len, prompt_dim, generator=gen)
    added = {k: torch.randn(num_samples, d, generator=gen) for k, d in (added_dims or {}).items()}
    return LatentDataset(latents, prompts, added, source="random data")


# ---------------------------------------------------------------- image folders

def scan_image_folder(root: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a folder where every image `x.png` has a caption file `x.txt`.
    Raises on a missing or empty folder, images without captions, captions without images, empty captions."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    captions = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    if not images:
        raise ValueError(f"image folder {root} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    stems = [p.stem for p in images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"image folder {root}: several images share a name, so captions are ambiguous: "
                         f"{duplicates[:5]}")
    no_caption = [p.name for p in images if p.stem not in captions]
    if no_caption:
        raise ValueError(f"image folder {root}: {len(no_caption)} images have no caption file <name>.txt, "
                         f"e.g. {no_caption[:5]}")
    orphan = sorted(p.name for s, p in captions.items() if s not in set(stems))
    if orphan:
        raise ValueError(f"image folder {root}: {len(orphan)} caption files have no image, e.g. {orphan[:5]}")
    pairs = []
    for image in images:
        caption = captions[image.stem].read_text(encoding="utf-8").strip()
        if not caption:
            raise ValueError(f"caption file {captions[image.stem]} is empty")
        pairs.append((image, caption))
    return pairs


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header; a clear error naming the file when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def load_image(path: Path, size_hw: tuple[int, int]) -> torch.Tensor:
    """RGB image resized to cover `size_hw` and centre-cropped to it, as `[3, H, W]` in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    h, w = size_hw
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = max(w / im.width, h / im.height)
            rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
            im = im.resize((rw, rh), Image.BICUBIC)
            left, top = (rw - w) // 2, (rh - h) // 2
            im = im.crop((left, top, left + w, top + h))
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return data.permute(2, 0, 1).float() / 127.5 - 1.0


def make_buckets(resolution: int, multiple: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(H, W) buckets of about `resolution**2` pixels, sides multiples of `multiple`, aspect up to `max_ratio`."""
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} must be a multiple of {multiple}")
    area = resolution * resolution
    buckets = set()
    w = multiple
    while w <= resolution * max_ratio:
        h = max(multiple, int(area / w) // multiple * multiple)
        if max(h / w, w / h) <= max_ratio:
            buckets.add((h, w))
        w += multiple
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - ratio), -hw[0] * hw[1]))


@torch.no_grad()
def encode_image_folder(root: str | Path, vae, encode_prompt: Callable[[list[str]], object], resolution: int,
                        bucket_multiple: int = 64, max_ratio: float = 2.0, batch_size: int = 4,
                        device: str | torch.device = "cpu", seed: int = 0) -> LatentDataset:
    """Encode every image once with `vae` (latents scaled by its `scaling_factor`, shifted by `shift_factor`
    when it has one) and every caption with `encode_prompt(captions)`, which returns `prompt_embeds [B, L, D]`
    or a dict with `prompt_embeds` and optionally `text_embeds` (SDXL pooled embeddings)."""
    pairs = scan_image_folder(root)
    buckets = make_buckets(resolution, bucket_multiple, max_ratio)
    assigned = [nearest_bucket(*image_size(p), buckets) for p, _ in pairs]
    scaling = float(getattr(vae.config, "scaling_factor", 1.0))
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    vae_dtype = next(vae.parameters()).dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    latents: list[torch.Tensor | None] = [None] * len(pairs)
    embeds: list[torch.Tensor | None] = [None] * len(pairs)
    pooled: list[torch.Tensor | None] = [None] * len(pairs)
    for bucket in sorted(set(assigned)):
        members = [i for i, b in enumerate(assigned) if b == bucket]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            pixels = torch.stack([load_image(pairs[i][0], bucket) for i in chunk]).to(device, vae_dtype)
            lat = vae.encode(pixels).latent_dist.sample(generator=gen)
            lat = ((lat.float() - shift) * scaling).cpu()
            enc = encode_prompt([pairs[i][1] for i in chunk])
            enc = enc if isinstance(enc, dict) else {"prompt_embeds": enc}
            if "prompt_embeds" not in enc:
                raise ValueError("encode_prompt must return prompt_embeds [B, L, D] or a dict holding it")
            for j, i in enumerate(chunk):
                latents[i] = lat[j]
                embeds[i] = enc["prompt_embeds"][j].float().cpu()
                if "text_embeds" in enc:
                    pooled[i] = enc["text_embeds"][j].float().cpu()
    added = {"text_embeds": torch.stack(pooled)} if all(p is not None for p in pooled) else {}
    return LatentDataset(latents, embeds, added, source=str(root))


# ---------------------------------------------------------------- batch order

class BucketBatchSampler:
    """Infinite, deterministic sequence of batches (lists of indices), each from one latent size.

    Epoch `e` shuffles every size group with a generator seeded from `(seed, e)`, cuts it into batches (a group
    smaller than the batch gives one smaller batch; otherwise the remainder is dropped), and shuffles the batch
    order. Batch `g` of the whole run is therefore a pure function of `(seed, g)`: resuming at step `s` is
    `iterate(start=s * num_processes)` with no sampler state to save. Process `r` of `n` takes batches
    `g * n + r`, like a distributed sampler.
    """

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(tuple(size), []).append(i)
        self.groups = [groups[k] for k in sorted(groups)]

    def epoch(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = []
        for members in self.groups:
            order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
            if len(order) <= self.batch_size:
                batches.append(order)
            else:
                batches.extend(order[s:s + self.batch_size]
                               for s in range(0, len(order) - self.batch_size + 1, self.batch_size))
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def iterate(self, start: int = 0, process_index: int = 0, num_processes: int = 1) -> Iterator[list[int]]:
        """Batches `start*n + r, (start+1)*n + r, ...` of the global sequence for process `r` of `n`."""
        g = start * num_processes + process_index
        epoch, epoch_batches, offset = 0, self.epoch(0), 0
        while True:
            while g >= offset + len(epoch_batches):
                offset += len(epoch_batches)
                epoch += 1
                epoch_batches = self.epoch(epoch)
            yield epoch_batches[g - offset]
            g += num_processes
