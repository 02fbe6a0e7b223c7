"""acetune.models.v1.vocoder: golden parity, official manifest, weight norm, folder round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from acetune.layout import CONFIG_FILE, WEIGHTS_FILE
from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, WNConv1d, WNConvTranspose1d, tiny_vocoder_config
from acetune.parity.registry import rel_l2


def _tiny_golden(golden) -> ADaMoSHiFiGANV1:
    model = ADaMoSHiFiGANV1(**tiny_vocoder_config()).eval()
    model.load_state_dict(load_file(golden / "codec" / "vocoder_tiny_weights.safetensors"), strict=True)
    return model


def test_tiny_config_is_the_golden_one(golden):
    meta = json.loads((golden / "codec" / "meta.json").read_text())
    want = {k: v for k, v in meta["vocoder_tiny_config"].items() if not k.startswith("_")}
    assert tiny_vocoder_config() == want


def test_golden_waveform_per_channel(golden):
    ref = load_file(golden / "codec" / "codec.safetensors")
    model = _tiny_golden(golden)
    mel = ref["vocoder_input_mel"]  # (2 channels, 1, 128, 240)
    wav = torch.cat([model.decode(mel[c]) for c in range(2)], dim=1)  # (1, 2, 122880)
    want = ref["decoded_44k"]
    assert rel_l2(wav, want) <= 1e-5  # measured 1.5e-7
    centred = rel_l2(wav - wav.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True))
    assert centred <= 1e-5, centred  # measured 6.6e-7


def test_official_config_matches_manifest_on_meta(golden):
    manifest = json.loads((golden / "v1_full_manifest.json").read_text())["models"]["music_vocoder"]
    with torch.device("meta"):
        model = ADaMoSHiFiGANV1()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sorted(set(got) ^ set(want)) == []
    assert {k: s for k, s in got.items() if s != want[k]} == {}
    assert len(got) == manifest["num_keys"] == 713
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    official = {k: v for k, v in manifest["config"].items() if not k.startswith("_")}
    assert json.loads(json.dumps(config)) == official  # defaults = released config (tuples as JSON lists)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("transpose", [False, True])
def test_weight_norm_matches_torch_old_weight_norm(transpose):
    from torch.nn.utils import weight_norm  # the deprecated API the reference uses

    cls, ref_cls = (WNConvTranspose1d, torch.nn.ConvTranspose1d) if transpose else (WNConv1d, torch.nn.Conv1d)
    args, kw = (8, 4, 6, 2), dict(padding=2)
    ref = weight_norm(ref_cls(*args, **kw))
    ours = cls(*args, **kw)
    ref_sd = ref.state_dict()
    assert set(ours.state_dict()) == set(ref_sd) == {"bias", "weight_g", "weight_v"}
    assert all(ours.state_dict()[k].shape == v.shape for k, v in ref_sd.items())
    ref_sd["weight_g"] = ref_sd["weight_g"] * 1.7  # make g differ from ‖v‖
    ref.load_state_dict(ref_sd)
    ours.load_state_dict(ref_sd)
    x = torch.randn(2, 8, 20)
    torch.testing.assert_close(ours(x), ref(x))


def test_folder_round_trip_in_official_layout(golden, tmp_path):
    model = _tiny_golden(golden)
    model.save_pretrained(tmp_path / "music_vocoder")
    assert (tmp_path / "music_vocoder" / WEIGHTS_FILE).is_file()
    config = json.loads((tmp_path / "music_vocoder" / CONFIG_FILE).read_text())
    assert config["_class_name"] == "ADaMoSHiFiGANV1"  # same as the release's config.json
    loaded = ADaMoSHiFiGANV1.from_pretrained(tmp_path / "music_vocoder")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    bf16 = ADaMoSHiFiGANV1.from_pretrained(tmp_path / "music_vocoder", torch_dtype=torch.bfloat16)
    assert bf16.head.conv_pre.weight_v.dtype == torch.bfloat16
    assert bf16.mel_transform.mel_scale.fb.dtype == torch.float32  # kept in fp32


def test_rejects_unsupported_options():
    with pytest.raises(ValueError, match="use_template"):
        ADaMoSHiFiGANV1(**{**tiny_vocoder_config(), "use_template": True})
    with pytest.raises(ValueError, match="hop_length"):
        ADaMoSHiFiGANV1(**{**tiny_vocoder_config(), "upsample_rates": [8, 8, 4]})
