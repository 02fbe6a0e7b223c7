"""The fork's side of `vs_fork.py` (runs in the fork's scratch env; imports nothing from acetune).

Only drives the fork's own modules from `--fork_dir`: builds its models with generated weights, feeds
them the same inputs as acetune's side, and times them; see `vs_fork.py` for the work of each case.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEDIUM = dict(num_layers=6, num_attention_heads=8, attention_head_dim=128, ssl_encoder_depths=[3, 3])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


def time_calls(fn, warmup: int, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def fork_env(fork_dir: Path) -> None:
    """Import path and the two stand-ins described in the module docstring."""
    import types

    import datasets  # noqa: F401  (these first: their torchvision probes must not see the stand-in)
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch
    import transformers  # noqa: F401

    sys.path.insert(0, str(fork_dir))
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

        class Compose:
            def __init__(self, transforms):
                self.transforms = transforms

            def __call__(self, x):
                for t in self.transforms:
                    x = t(x)
                return x

        class Normalize:
            def __init__(self, mean, std):
                self.mean, self.std = mean, std

            def __call__(self, x):
                return (x - self.mean) / self.std

        tr.Compose, tr.Normalize, tv.transforms = Compose, Normalize, tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    import torchaudio

    try:
        import torchcodec  # noqa: F401
    except Exception:
        import soundfile

        def load(path, *args, **kwargs):
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return torch.from_numpy(data.T.copy()), rate

        torchaudio.load = load


def _golden_det_tensor():
    import importlib.util

    golden = Path(os.environ.get("ACETUNE_GOLDEN", HERE.parents[1] / "shared" / "golden"))
    spec = importlib.util.spec_from_file_location("golden_det_init", golden / "det_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.det_tensor


def _fork_transformer(fork_dir: Path, config: str):
    """The fork's ACEStepTransformer2DModel, built on meta, parameters set by the golden rule in bf16
    (never a full fp32 copy), rotary and positional tables rebuilt on CPU by the fork's own code, then
    cast like the fork's `.to(dtype)`."""
    import torch
    from acestep.models.ace_step_transformer import ACEStepTransformer2DModel

    cfg = {k: v for k, v in json.loads((fork_dir / "acestep/models/config.json").read_text()).items()
           if not k.startswith("_")}
    cfg.update(MEDIUM if config == "medium" else {})
    det_tensor = _golden_det_tensor()
    with torch.device("meta"):
        model = ACEStepTransformer2DModel(**cfg)
    for name, param in list(model.named_parameters()):
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, leaf, torch.nn.Parameter(det_tensor(name, param.shape, torch.bfloat16)))
    rot = model.rotary_emb
    model.rotary_emb = type(rot)(dim=rot.dim, max_position_embeddings=rot.max_position_embeddings, base=rot.base)
    for module in model.modules():  # the lyric encoder's positional table is a plain attribute
        pe = getattr(module, "pe", None)
        if isinstance(pe, torch.Tensor) and pe.is_meta and hasattr(module, "extend_pe"):
            module.pe = None
            module.extend_pe(torch.tensor(0.0).expand(1, (pe.shape[1] + 1) // 2))
    return model.to(torch.bfloat16)


def fork_train(fork_dir: Path, config: str, seconds: int, warmup: int, repeats: int) -> dict:
    import inspect

    import torch
    import train as acetune_train_bench  # constants only (frames, SSL rates); no acetune import
    import trainer_new
    from peft import LoraConfig
    from pytorch_lightning import LightningModule

    model = _fork_transformer(fork_dir, config)
    model.train()
    model.enable_gradient_checkpointing()
    lora = json.loads((fork_dir / "config/lora_config_transformer_only.json").read_text())
    model.add_adapter(adapter_config=LoraConfig(**lora), adapter_name="lora_adapter")

    class Step(trainer_new.Pipeline):
        """The fork's LightningModule without its checkpoint loading; logging is a no-op outside a Trainer."""

        def __init__(self, transformer):
            LightningModule.__init__(self)
            sig = inspect.signature(trainer_new.Pipeline.__init__).parameters
            self.save_hyperparameters({k: p.default for k, p in sig.items() if k != "self"})
            self._dtype, self._device = torch.bfloat16, torch.device("cpu")
            self.scheduler = self.get_scheduler()
            self.transformer = transformer
            self.sched = None

        dtype = property(lambda self: self._dtype)
        device = property(lambda self: self._device)

        def log(self, *args, **kwargs):
            pass

        def lr_schedulers(self):
            return self.sched

    step = Step(model)
    [optimizer], [sched] = step.configure_optimizers()
    step.sched = sched["scheduler"]
    params = [p for p in model.parameters() if p.requires_grad]
    frames = acetune_train_bench.FRAMES[f"{seconds}s"]
    g = torch.Generator().manual_seed(0)
    hz = acetune_train_bench.SSL_HZ
    batch = {"keys": ["bench"], "target_latents": torch.randn(1, 8, 16, frames, generator=g),
             "attention_mask": torch.ones(1, frames), "encoder_text_hidden_states": torch.randn(1, 20, 768, generator=g),
             "text_attention_mask": torch.ones(1, 20), "speaker_embds": torch.zeros(1, 512),
             "lyric_token_ids": torch.randint(1, 6000, (1, 200), generator=g), "lyric_mask": torch.ones(1, 200),
             "mert_ssl_hidden_states": torch.randn(1, seconds * hz[0], 1024, generator=g),
             "mhubert_ssl_hidden_states": torch.randn(1, seconds * hz[1], 768, generator=g)}

    def one_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning "bf16-mixed" on CPU
            loss = step.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # gradient_clip_val=1, algorithm "norm"
        optimizer.step()
        step.sched.step()
        optimizer.zero_grad(set_to_none=True)

    return {"time_s": time_calls(one_step, warmup, repeats), "peak_rss_gb": peak_rss_gb()}


def _fork_codec(work_dir: Path):
    import torch
    from acestep.music_dcae.music_dcae_pipeline import MusicDCAE

    codec = MusicDCAE(dcae_checkpoint_path=str(work_dir / "codec/music_dcae_f8c8"),
                      vocoder_checkpoint_path=str(work_dir / "codec/music_vocoder"))
    return codec.to(torch.bfloat16).eval()  # `Preprocessor.to(device, dtype)`


def fork_other(case: str, work_dir: Path, warmup: int, repeats: int) -> dict:
    import numpy as np
    import torch

    codec = _fork_codec(work_dir)
    if case == "dcae-encode-official-30s":
        wav = torch.from_numpy(np.load(work_dir / "audio30_48k.npy"))[None].to(torch.bfloat16)
        lengths = torch.tensor([wav.shape[-1]])

        def run():
            with torch.inference_mode():  # preprocess_dataset_new.main runs under inference_mode
                codec.encode(wav, lengths)
    else:
        from acestep.text2music_dataset import Text2MusicDataset

        path = str(work_dir / "song180.wav")

        def run():
            with torch.inference_mode():
                audio = Text2MusicDataset.get_audio(None, {"filename": path})  # uses no instance state
                audio = codec.resampler(audio[None].to(torch.bfloat16))
                audio = torch.nn.functional.pad(audio, (0, -audio.shape[-1] % (8 * 512)))  # as in `encode`
                mels = codec.forward_mel(audio)
                mels = (mels - codec.min_mel_value) / (codec.max_mel_value - codec.min_mel_value)
                return codec.transform(mels)
    return {"time_s": time_calls(run, warmup, repeats), "peak_rss_gb": peak_rss_gb()}


def fork_preprocess(fork_dir: Path, root: Path) -> dict:
    """One whole run of the fork's `preprocess_dataset_new.main` over `root`'s songs (see `vs_fork_prep.py`).

    Changes to the fork's run, all on its device handling or the inputs' location (no encoder code):
    its `Preprocessor` is used through a subclass whose `.to` keeps everything on the CPU (it says
    "cuda:0") and whose device is the CPU; `torch.cuda.is_bf16_supported` answers True after the
    module is imported, so it picks bf16 as on a bf16 GPU; its pipeline's 3.5B transformer load is
    skipped (the transformer is deleted unused by `Preprocessor.__init__`); the Arrow cache is a
    fresh folder per run (else `Dataset.from_generator` would reuse a previous run's rows).
    """
    import tempfile
    import types

    import convert2hf_dataset_new
    import datasets
    import preprocess_dataset_new as prep
    import torch
    from acestep import pipeline_ace_step

    torch.cuda.is_bf16_supported = lambda *args, **kwargs: True
    pipeline_ace_step.ACEStepTransformer2DModel = types.SimpleNamespace(
        from_pretrained=lambda *args, **kwargs: torch.nn.Identity())
    load = {}

    class CpuPreprocessor(prep.Preprocessor):
        def __init__(self, checkpoint_dir=None):
            start = time.perf_counter()
            super().__init__(checkpoint_dir)
            self.device = torch.device("cpu")
            load["s"] = time.perf_counter() - start

        def to(self, *args, **kwargs):
            return super().to("cpu", *args[1:], **kwargs)

    prep.Preprocessor = CpuPreprocessor
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp) / "cache"
        convert2hf_dataset_new.create_dataset(str(root / "songs"), 1, f"{tmp}/ds_fork", "")
        sys.argv = ["preprocess_dataset_new.py", "--input_name", f"{tmp}/ds_fork", "--output_name", f"{tmp}/out",
                    "--checkpoint_dir", str(root / "ckpt")]
        start = time.perf_counter()
        prep.main()
        total = time.perf_counter() - start
        songs = len(datasets.load_from_disk(f"{tmp}/out"))
    return {"time_s": total, "encode_s": total - load["s"], "load_s": load["s"], "songs": songs, "peak_rss_gb": peak_rss_gb()}
