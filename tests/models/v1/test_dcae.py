"""acetune.models.v1.dcae: golden codec case, official manifest, folder layout and errors, windowing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderDC
from safetensors.torch import load_file, save_file

from acetune.audio.resample import resample
from acetune.errors import CheckpointError
from acetune.layout import CONFIG_FILE, V1_DCAE_DIR, V1_VOCODER_DIR, WEIGHTS_FILE
from acetune.models.v1.dcae import MusicDCAE, official_dcae_config, plan_windows, tiny_dcae_config
from acetune.models.v1.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config
from acetune.parity.codec import build_golden_codec
from acetune.parity.registry import rel_l2, run_case
from golden_checks import assert_rows_pass


@pytest.fixture(scope="module")
def codec_dir(golden, tmp_path_factory) -> Path:
    """The golden tiny DCAE + vocoder saved in the official layout."""
    folder = tmp_path_factory.mktemp("ckpt")
    build_golden_codec(golden, folder)
    return folder


@pytest.fixture(scope="module")
def codec(codec_dir) -> MusicDCAE:
    return MusicDCAE.from_pretrained(codec_dir)


def test_golden_codec_case_passes(golden):
    rows = assert_rows_pass(run_case("v1_codec", golden))
    names = {r.tensor for r in rows}
    assert {"log_mel", "dcae_encoder_input", "latents", "latent_lengths", "vocoder_input_mel", "decoded_44k",
            "decoded_48k minus channel mean", "resampled_44k"} <= names


def test_tiny_config_is_the_golden_one(golden):
    meta = json.loads((golden / "codec" / "meta.json").read_text())
    assert tiny_dcae_config() == {k: v for k, v in meta["dcae_tiny_config"].items() if not k.startswith("_")}


def test_official_config_matches_manifest_on_meta(golden):
    manifest = json.loads((golden / "v1_full_manifest.json").read_text())["models"]["music_dcae_f8c8"]
    assert official_dcae_config() == {k: v for k, v in manifest["config"].items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoencoderDC(**official_dcae_config())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sorted(set(got) ^ set(want)) == []
    assert {k: s for k, s in got.items() if s != want[k]} == {}
    assert len(got) == manifest["num_keys"] == 192
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_folder_layout_and_dtype(codec_dir):
    for sub in (V1_DCAE_DIR, V1_VOCODER_DIR):
        assert (codec_dir / sub / CONFIG_FILE).is_file() and (codec_dir / sub / WEIGHTS_FILE).is_file()
    model = MusicDCAE.from_pretrained(codec_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.vocoder.mel_transform.mel_scale.fb.dtype == torch.float32
    latents, lengths = model.encode(torch.randn(1, 2, 48000) * 0.1)
    assert latents.shape == (1, 8, 16, 11) and lengths.tolist() == [10]
    sr, wavs = model.decode(latents, audio_lengths=[40000], sr=48000)
    assert sr == 48000 and wavs[0].shape == (2, 40000) and wavs[0].dtype == torch.float32


def _copy(codec_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(codec_dir, dst)
    return dst


def test_missing_or_wrong_folders_raise_one_line_errors(codec_dir, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        MusicDCAE.from_pretrained(tmp_path / "nowhere")
    ckpt = _copy(codec_dir, tmp_path)
    shutil.rmtree(ckpt / V1_VOCODER_DIR)
    with pytest.raises(CheckpointError, match=r"no music_vocoder/ folder \(found: music_dcae_f8c8/\)"):
        MusicDCAE.from_pretrained(ckpt)
    (ckpt / V1_DCAE_DIR / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing diffusion_pytorch_model.safetensors"):
        MusicDCAE.from_pretrained(ckpt)


def test_wrong_model_or_weights_raise_checkpoint_error(codec_dir, tmp_path):
    ckpt = _copy(codec_dir, tmp_path)
    # A vocoder folder in the DCAE's place: wrong class.
    shutil.rmtree(ckpt / V1_DCAE_DIR)
    shutil.copytree(ckpt / V1_VOCODER_DIR, ckpt / V1_DCAE_DIR)
    with pytest.raises(CheckpointError, match="describes a ADaMoSHiFiGANV1, expected AutoencoderDC") as err:
        MusicDCAE.from_pretrained(ckpt)
    assert "\n" not in str(err.value)
    # Weights that do not fit the config (a vocoder with other widths).
    ckpt = _copy(codec_dir, tmp_path / "b")
    ADaMoSHiFiGANV1(**{**tiny_vocoder_config(), "dims": [8, 8, 16, 16], "num_mels": 16}).save_pretrained(
        tmp_path / "other")
    shutil.copy(tmp_path / "other" / WEIGHTS_FILE, ckpt / V1_VOCODER_DIR / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="cannot load music_vocoder: .*expected shape") as err:
        MusicDCAE.from_pretrained(ckpt)
    assert "\n" not in str(err.value)
    # A weight missing from the file.
    ckpt = _copy(codec_dir, tmp_path / "c")
    weights = load_file(ckpt / V1_VOCODER_DIR / WEIGHTS_FILE)
    weights.pop("head.conv_post.bias")
    save_file(weights, ckpt / V1_VOCODER_DIR / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="1 weights missing .*head.conv_post.bias"):
        MusicDCAE.from_pretrained(ckpt)


@pytest.mark.parametrize("total,window,context", [(5, 8, 2), (100, 16, 4), (31, 12, 3), (1077, 1024, 128)])
def test_plan_windows_tiles_and_stays_in_bounds(total, window, context):
    spans = plan_windows(total, window, context)
    assert [c0 for _, _, c0, _ in spans][0] == 0 and spans[-1][3] == total
    assert all(a[3] == b[2] for a, b in zip(spans, spans[1:]))  # cores tile [0, total)
    for s, e, c0, c1 in spans:
        assert 0 <= s <= c0 < c1 <= e <= total and e - s == min(window, total)
        assert c0 - s >= min(context, c0) and e - c1 >= min(context, total - c1)


def _clip(seconds: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = int(48000 * seconds)
    t = torch.arange(n) / 48000
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t * (1 + 0.1 * torch.sin(t)))
    return torch.stack([tone, tone.roll(50)])[None] + 0.05 * torch.randn(1, 2, n, generator=g)


@pytest.fixture(scope="module")
def long_clip(codec):
    """A 20 s clip (216 latent frames: 5 windows of 64) and its one-pass latents."""
    audio = _clip(20.0)
    return audio, *codec.encode(audio, window=None)


def test_windowed_encode_equals_one_shot(codec, long_clip):
    audio, one_shot, lengths = long_clip
    windowed, wlengths = codec.encode(audio, window=64)  # the default path's code, 48-frame cores
    assert torch.equal(wlengths, lengths) and windowed.shape == one_shot.shape
    diff = rel_l2(windowed, one_shot)
    print(f"windowed encode (64-frame windows) vs one-shot on the tiny model: rel L2 {diff:.3e}")
    # float rounding only (~8e-7, also with the default 512-frame windows on a 50 s clip): the attention
    # statistics are summed over the whole song; independent windows were 1-2e-2 here
    assert diff <= 1e-5
    default, _ = codec.encode(audio)  # fits the default window: the reference's own forward
    assert torch.equal(default, one_shot)


def test_stream_context_below_the_receptive_field_is_not_exact(codec, long_clip):
    """The test above can fail: too little context (encoder receptive field ~6 latent frames) shows."""
    from acetune.models.v1.dcae import TIME_MULTIPLE
    from acetune.models.v1.dcae_stream import encode_stream

    audio, one_shot, _ = long_clip
    mel = codec.dcae_input(resample(audio, 48000, 44100)[0][None])
    raw = encode_stream(codec.dcae.encoder, mel, 64, TIME_MULTIPLE, context=4)
    assert rel_l2(raw, codec.dcae.encoder(mel)) > 1e-5  # measured 2e-5 (context 2: 5e-3)


def test_windowed_decode_equals_one_shot(codec, long_clip):
    latents = long_clip[1][..., :140]
    mel = codec.decode_mel(latents, window=None)
    diff = rel_l2(codec.decode_mel(latents, window=64), mel)  # 3 windows
    print(f"windowed DCAE decode (64-frame windows) vs one-shot: rel L2 {diff:.3e}")
    assert diff <= 1e-5  # float rounding only (~7e-7); independent windows were ~2e-2
    assert torch.equal(codec.decode_mel(latents), mel)  # fits the default window: one pass
    # The vocoder is local: with more context than its receptive field, windows change nothing.
    one = codec.vocode(mel[0, :1, :, :300], window=None)
    win = codec.vocode(mel[0, :1, :, :300], window=256, context=96)
    assert rel_l2(win, one) < 1e-6


def test_encode_rejects_mono():
    model = MusicDCAE(AutoencoderDC(**tiny_dcae_config()), ADaMoSHiFiGANV1(**tiny_vocoder_config()))
    with pytest.raises(ValueError, match="stereo"):
        model.encode(torch.zeros(1, 1, 4800))
