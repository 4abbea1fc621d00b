"""analyze -> convert hand-off: the analysis finds layers and records their map sizes with the
integrations' own code (same names and order as convert), `deltaconv analyze` takes a pipeline folder (finds the
denoiser, reads the VAE scale factor), and convert / `deltaconv distill --kernel-sizes` take its analysis.json."""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("diffusers")

from tiny_models import tiny_dit, tiny_pixart, tiny_pixart_pipeline, tiny_unet  # noqa: E402

from deltaconv_kernels.analysis import cli  # noqa: E402
from deltaconv_kernels.analysis.capture import AttentionCapture, self_attention_layers  # noqa: E402
from deltaconv_kernels.integrations import diffusers as dd  # noqa: E402
from deltaconv_kernels.integrations.diffusers.sites import find_sites  # noqa: E402


@pytest.mark.parametrize("make", [lambda: tiny_unet("sd15"), lambda: tiny_unet("sdxl"), tiny_pixart, tiny_dit])
def test_analysis_layers_are_the_converted_layers(make):
    model = make()
    report = dd.convert(copy.deepcopy(model), kernel_sizes=3)
    assert list(self_attention_layers(model)) == [r.name for r in report]
    capture = AttentionCapture(model, lambda c: None)
    assert [(s.owner_name, s.patch) for s in capture.sites.values()] == [
        (s.owner_name, s.patch) for s in find_sites(model)]


def test_analyze_pipeline_folder_then_convert_and_distill_take_analysis_json(tmp_path):
    from deltaconv_kernels.cli import build_parser
    from deltaconv_kernels.distill.cli import _kernel_sizes

    pipe = tiny_pixart_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    argv = ["analyze", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "a"), "--resolution", "24x16",
            "--timesteps", "500", "--num-queries", "4", "--no-plots", "--no-progress"]
    assert cli.run(build_parser(argv).parse_args(argv)) == 0
    analysis = tmp_path / "a" / "analysis.json"
    data = json.loads(analysis.read_text())
    assert data["latent_hw"] == [12, 8]  # the tiny VAE's factor 2, not the default 8
    sizes = data["kernel_sizes"]
    for given in (analysis, str(analysis), data, _kernel_sizes(str(analysis))):
        report = dd.convert(tiny_pixart(), kernel_sizes=given)
        assert report.kernel_sizes() == sizes
    with pytest.raises(ValueError, match="no file"):
        dd.convert(tiny_pixart(), kernel_sizes=str(tmp_path / "missing.json"))
