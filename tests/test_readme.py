"""The README's diffusers section runs as written: its Python blocks, in order, on a tiny text-to-image pipeline saved
to a folder. The only substitutions are the model id (the folder instead of the Hub repo) and the image size."""

import json
import re
from pathlib import Path

import pytest
from tiny_models import tiny_sd_pipeline_with_text

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = '"stable-diffusion-v1-5/stable-diffusion-v1-5"'


def _diffusers_section_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Using ΔConvBlocks in diffusers", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2, "the diffusers section lost its code blocks"
    return "\n".join(blocks)


def test_readme_diffusers_section_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    code = _diffusers_section_code()
    assert code.count(HUB_ID) == 1 and code.count("height=768, width=512") == 1
    folder = tiny_sd_pipeline_with_text(tmp_path / "sd15")
    code = code.replace(HUB_ID, repr(folder)).replace("height=768, width=512", "height=40, width=24")
    monkeypatch.chdir(tmp_path)
    # What `deltaconv analyze --out sd15_locality` writes holds the layers' kernel sizes under "kernel_sizes".
    from diffusers import UNet2DConditionModel

    from deltaconv_kernels.integrations import diffusers as dd
    layers = dd.convert(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), kernel_sizes=5).kernel_sizes()
    (tmp_path / "sd15_locality").mkdir()
    (tmp_path / "sd15_locality" / "analysis.json").write_text(json.dumps({"kernel_sizes": layers}))
    namespace = {}
    exec(compile(code, "README.md (diffusers section)", "exec"), namespace)
    images, pipe, unet = namespace["images"], namespace["pipe"], namespace["unet"]
    assert len(images) == 1 and images[0].size == (24, 40)
    assert len(list(dd.iter_deltaconv_modules(pipe.unet))) == 10 and pipe.unet.dtype.itemsize == 2
    assert not list(dd.iter_deltaconv_modules(unet))  # reverted
    assert (tmp_path / "shipped" / "unet" / "deltaconv.json").is_file()
