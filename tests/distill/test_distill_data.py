"""Distillation data: image folders (and their error cases), latents files, random data, buckets and the
deterministic, shardable batch order."""

import pytest
import torch

from deltaconv_kernels.distill import data


def _png(path, w=20, h=12, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def _folder(tmp_path, names=("a", "b")):
    for i, n in enumerate(names):
        _png(tmp_path / f"{n}.png", seed=i)
        (tmp_path / f"{n}.txt").write_text(f"caption {n}\n")
    return tmp_path


def test_scan_folder_pairs_images_with_captions(tmp_path):
    pairs = data.scan_image_folder(_folder(tmp_path))
    assert [(p.name, c) for p, c in pairs] == [("a.png", "caption a"), ("b.png", "caption b")]


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.scan_image_folder(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="has no images"):
        data.scan_image_folder(tmp_path)


def test_image_without_caption(tmp_path):
    _folder(tmp_path)
    (tmp_path / "b.txt").unlink()
    with pytest.raises(ValueError, match=r"1 images have no caption file.*b\.png"):
        data.scan_image_folder(tmp_path)


def test_caption_without_image(tmp_path):
    _folder(tmp_path)
    (tmp_path / "c.txt").write_text("orphan")
    with pytest.raises(ValueError, match=r"caption files have no image.*c\.txt"):
        data.scan_image_folder(tmp_path)


def test_empty_caption(tmp_path):
    _folder(tmp_path)
    (tmp_path / "a.txt").write_text("  \n")
    with pytest.raises(ValueError, match="a.txt is empty"):
        data.scan_image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    _folder(tmp_path)
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        data.image_size(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        data.encode_image_folder(tmp_path, vae=None, encode_prompt=None, resolution=16, bucket_multiple=8)


def test_load_image_covers_and_crops(tmp_path):
    _png(tmp_path / "x.png", w=30, h=10)
    img = data.load_image(tmp_path / "x.png", (8, 16))
    assert img.shape == (3, 8, 16) and img.min() >= -1 and img.max() <= 1


def test_buckets_and_nearest():
    buckets = data.make_buckets(64, multiple=16, max_ratio=2.0)
    assert (64, 64) in buckets
    for h, w in buckets:
        assert h % 16 == 0 and w % 16 == 0 and max(h / w, w / h) <= 2.0
    assert data.nearest_bucket(200, 100, buckets)[1] > data.nearest_bucket(200, 100, buckets)[0]
    assert data.nearest_bucket(50, 50, buckets) == (64, 64)
    with pytest.raises(ValueError, match="multiple"):
        data.make_buckets(60, multiple=16)


def test_encode_image_folder_with_tiny_vae(tmp_path):
    from tiny_models import tiny_vae

    _folder(tmp_path, names=("a", "b", "c"))
    _png(tmp_path / "wide.png", w=40, h=10, seed=7)
    (tmp_path / "wide.txt").write_text("wide one")

    def encode(captions):
        return torch.stack([torch.full((3, 5), float(len(c))) for c in captions])

    ds = data.encode_image_folder(tmp_path, tiny_vae(), encode, resolution=16, bucket_multiple=8, max_ratio=4.0,
                                 batch_size=2)
    assert len(ds) == 4
    assert len(set(ds.sizes())) == 2  # the wide image lands in another bucket
    assert all(lat.shape[0] == 4 for lat in ds.latents)
    assert float(ds.prompt_embeds[3][0, 0]) == len("wide one")


def test_latents_file_roundtrip_and_errors(tmp_path):
    ds = data.random_dataset(5, 4, [(8, 8), (8, 6)], 3, 7, added_dims={"text_embeds": 2, "time_ids": 6})
    ds.save(tmp_path / "lat.pt")
    back = data.load_latents_file(tmp_path / "lat.pt")
    assert len(back) == 5 and back.sizes() == ds.sizes()
    batch = back.collate([0, 2])
    assert batch["latents"].shape == (2, 4, 8, 8) and batch["time_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="mixes latent shapes"):
        back.collate([0, 1])
    torch.save({"latents": torch.zeros(2, 4, 8, 8)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"lacks \['prompt_embeds'\]"):
        data.load_latents_file(tmp_path / "bad.pt")
    torch.save({"latents": torch.zeros(2, 4, 8, 8), "prompt_embeds": torch.zeros(3, 2, 5)}, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match="2 latents but 3 prompt_embeds"):
        data.load_latents_file(tmp_path / "bad2.pt")
    with pytest.raises(FileNotFoundError):
        data.load_latents_file(tmp_path / "none.pt")


def test_latents_safetensors(tmp_path):
    from safetensors.torch import save_file

    tensors = {"latents": torch.randn(3, 4, 6, 6), "prompt_embeds": torch.randn(3, 2, 5)}
    save_file(tensors, str(tmp_path / "l.safetensors"))
    assert len(data.load_latents_file(tmp_path / "l.safetensors")) == 3


def test_batch_sampler_is_deterministic_bucketed_and_resumable():
    sizes = [(8, 8)] * 7 + [(8, 6)] * 5
    s = data.BucketBatchSampler(sizes, batch_size=3, seed=4)
    it = s.iterate()
    seq = [next(it) for _ in range(12)]
    for b in seq:
        assert len({sizes[i] for i in b}) == 1
    again = s.iterate(start=5)
    assert [next(again) for _ in range(7)] == seq[5:]
    assert seq[:3] != [next(data.BucketBatchSampler(sizes, 3, seed=5).iterate()) for _ in range(1)] * 3


def test_batch_sampler_shards_processes():
    s = data.BucketBatchSampler([(4, 4)] * 20, batch_size=2, seed=0)
    full = s.iterate()
    seq = [next(full) for _ in range(8)]
    r0, r1 = s.iterate(0, 0, 2), s.iterate(0, 1, 2)
    assert [next(r0) for _ in range(4)] == seq[0::2]
    assert [next(r1) for _ in range(4)] == seq[1::2]
    resumed = s.iterate(2, 1, 2)
    assert next(resumed) == seq[5]
