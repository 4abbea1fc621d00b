"""What the diffusers integration reads and writes on disk, and the checks every loader runs on it: the error
type, the file names and formats, reading state dicts (safetensors, weights-only torch files), and checking their
tensors (keys, shapes, finite values) before a model is touched. A leaf: it imports nothing of the integration.

Layouts (docs/DESIGN.md §8): a `save` folder holds `WEIGHT_FILES`; a converted model folder (`save_pretrained`)
adds `BASE_NAME`, the diffusers `config.json` and the guard index `GUARD_NAME`; a converted pipeline folder is
diffusers' pipeline folder whose denoiser subfolder (one of `DENOISERS`) is a converted model folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from deltaconv_kernels.modules import DeltaConvBlock

# `save` / `load`: the ΔConvBlock weights (keys `<layer name>.<block parameter>`) and their config.
WEIGHTS_NAME = "deltaconv.safetensors"
CONFIG_NAME = "deltaconv.json"
WEIGHT_FILES = (WEIGHTS_NAME, CONFIG_NAME)
FORMAT = "deltaconv_kernels.diffusers"
VERSION = 1

# `save_pretrained` / `from_pretrained`: the rest of the converted model, and the guard against diffusers' loader.
BASE_NAME = "deltaconv_base.safetensors"
GUARD_NAME = "diffusion_pytorch_model.safetensors.index.json"  # diffusers' sharded-checkpoint index name
ADVICE = "converted-by-deltaconv_kernels--load-with-deltaconv_kernels.integrations.diffusers.from_pretrained"
PRETRAINED_FORMAT = "deltaconv_kernels.diffusers.pretrained"
PRETRAINED_VERSION = 1
DENOISERS = ("unet", "transformer")

# Released ΔConvFusion and LinFusion checkpoints: the files a folder of them may hold.
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
NESTS = ("base", "base_ema")  # older rainbowneko savers: .pt {"base": sd} / {"base_ema": sd}, safetensors "base:<key>"


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into (or is malformed)."""


def denoiser_subfolder(folder: Path) -> str | None:
    """The subfolder of a converted pipeline folder that holds the converted denoiser, None for a model folder."""
    if not (folder / "model_index.json").is_file():
        return None
    found = [name for name in DENOISERS if (folder / name / BASE_NAME).is_file()]
    if len(found) != 1:
        raise CheckpointError(f"{folder} is a pipeline folder, but {'none' if not found else 'several'} of its "
                              f"{list(DENOISERS)} subfolders hold a converted model ({BASE_NAME})")
    return found[0]


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, or ValueError by case
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _unnest(obj: dict, file: Path) -> dict:
    """The state dict under a rainbowneko `base` / `base_ema` nest (.pt dict entry or safetensors key prefix)."""
    nested = [n for n in NESTS if isinstance(obj.get(n), dict)]
    if len(nested) > 1:
        raise CheckpointError(f"{file}: holds both {nested}: keep one of them in the file (or pass a file with one)")
    if nested:
        return obj[nested[0]]
    prefixes = {k.split(":", 1)[0] for k in obj if isinstance(k, str) and ":" in k and k.split(":", 1)[0] in NESTS}
    if len(prefixes) > 1:
        raise CheckpointError(f"{file}: keys carry both prefixes {sorted(prefixes)}: keep one of them in the file")
    if prefixes:
        head = prefixes.pop() + ":"
        return {k[len(head):]: v for k, v in obj.items() if k.startswith(head)}
    return obj


def _load_one(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        obj = read_weights(file)
    else:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors
            raise CheckpointError(f"{file}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
        for key in ("state_dict", "model", "module"):  # common training-checkpoint wrappers
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in _unnest(obj, file).items() if isinstance(v, torch.Tensor)}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of one file, or of every checkpoint file in a directory (a key in two files is an error)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in SUFFIXES and f.is_file())
        if not files:
            raise CheckpointError(f"{path} holds no checkpoint files ({', '.join(SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise CheckpointError(f"{path} does not exist")
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        for key, t in _load_one(file).items():
            if key in merged:
                raise CheckpointError(f"key {key!r} appears in more than one file under {path}")
            merged[key] = t
    return merged


def check_tensor_values(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Floating tensors with only finite values (NaN/Inf weights would poison every output)."""
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{what}: {key} has dtype {t.dtype}; ΔConvBlock weights are floating point")
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{what}: {key} holds {bad} NaN/Inf values")


def expected_shapes(layer_configs: dict, scales, inter_ratio) -> dict[str, tuple[int, ...]]:
    """`<layer>.<param>` -> shape for blocks with these configs (built on the meta device: no memory)."""
    shapes = {}
    for name, c in layer_configs.items():
        block = DeltaConvBlock(c["dim"], c["kernel_size"], tuple(scales), inter_ratio, c["gate"], device="meta")
        shapes.update({f"{name}.{k}": tuple(t.shape) for k, t in block.state_dict().items()})
    return shapes


def check_tensors(shapes: dict, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Exactly the expected keys with the expected shapes, else a CheckpointError naming the first differences."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing:
        raise CheckpointError(f"{what} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if extra:
        raise CheckpointError(f"{what} has {len(extra)} unexpected tensors, e.g. {extra[:3]}")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{what}: {key} has shape {tuple(tensors[key].shape)}, the model expects {shape}")
