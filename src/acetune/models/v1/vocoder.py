"""ACE-Step v1 vocoder: log-mel (128 × F) -> 44.1 kHz waveform (F · 512 samples), one channel at a time.

The reference's `ADaMoSHiFiGANV1` (`acestep/music_dcae/music_vocoder.py`): a ConvNeXt backbone
(ConvNeXt-V1 blocks over time, 4 stages) that maps the mel to `dims[-1]` channels per frame, and a
HiFi-GAN generator head that upsamples frames to samples (product of `upsample_rates` = hop 512).
Attribute names follow the released `music_vocoder/` state dict (see the manifest in
../shared/golden/v1_full_manifest.json), so loading is a plain `load_state_dict`. The head's convs
use the *old* `torch.nn.utils.weight_norm` parameterisation (keys `weight_g`, `weight_v`), rebuilt
here as two small conv subclasses. Inference only: drop-path and the "template" noise branch of
the original generator are not implemented (the released config disables both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from acetune.models.v1.mel import LogMelSpectrogram

# ---- helpers ----


def _split_weight_norm(conv: nn.Module) -> None:
    """Replace `conv.weight` by `weight_g` (norm over every axis but 0) and `weight_v` (the direction)."""
    v = conv._parameters.pop("weight").detach()
    conv.weight_g = nn.Parameter(v.norm(dim=(1, 2), keepdim=True))
    conv.weight_v = nn.Parameter(v)


def _weight_from_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """weight = g · v / ‖v‖, the norm taken over every axis but 0 (old `weight_norm`, dim=0)."""
    return v * (g / v.norm(dim=tuple(range(1, v.dim())), keepdim=True))


class WNConv1d(nn.Conv1d):
    """Conv1d with old-style weight norm: parameters `weight_g` (out, 1, 1) and `weight_v` (out, in, k)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _split_weight_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _weight_from_norm(self.weight_v, self.weight_g), self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d with old-style weight norm; dim 0 of its weight (in, out, k) is the *input* axis."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _split_weight_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _weight_from_norm(self.weight_v, self.weight_g)
        return F.conv_transpose1d(x, w, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over axis 1 of (B, C, T), eps 1e-6 (reference `LayerNorm(data_format="channels_first")`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)  # biased variance, as the reference
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None] * x + self.bias[:, None]


# ---- backbone: ConvNeXt over time ----


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k 7) -> LayerNorm -> Linear(d, 4d) -> GELU -> Linear(4d, d) -> × gamma -> + x."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # over channels, after moving them last
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        h = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ConvNeXtEncoder(nn.Module):
    """Stem / transitions in `channel_layers`, blocks in `stages`, final `norm` (reference `ConvNeXtEncoder`)."""

    def __init__(self, input_channels: int, depths: list[int], dims: list[int], kernel_size: int = 7):
        super().__init__()
        stem = nn.Sequential(
            nn.Conv1d(input_channels, dims[0], 7, padding=3, padding_mode="replicate"),
            ChannelsFirstLayerNorm(dims[0]),
        )
        transitions = [nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1))
                       for i in range(len(dims) - 1)]
        self.channel_layers = nn.ModuleList([stem, *transitions])
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d, kernel_size) for _ in range(n)]) for n, d in zip(depths, dims)
        )
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_channels, F) -> (B, dims[-1], F)."""
        for channel_layer, stage in zip(self.channel_layers, self.stages):
            x = stage(channel_layer(x))
        return self.norm(x)


# ---- head: HiFi-GAN generator ----


class ResBlock1(nn.Module):
    """Three times x ← x + conv2(SiLU(conv1(SiLU(x)))), conv1 dilated (1, 3, 5), conv2 dilation 1."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.silu(c1(F.silu(x))))
        return x


class HiFiGANGenerator(nn.Module):
    """conv_pre -> [SiLU -> ConvTranspose (×u_i) -> mean of resblocks] per stage -> SiLU -> conv_post -> tanh."""

    def __init__(self, num_mels: int, upsample_initial_channel: int, upsample_rates: list[int],
                 upsample_kernel_sizes: list[int], resblock_kernel_sizes: list[int],
                 resblock_dilation_sizes: list[list[int]], pre_conv_kernel_size: int, post_conv_kernel_size: int):
        super().__init__()
        c0 = upsample_initial_channel
        self.num_kernels = len(resblock_kernel_sizes)
        self.conv_pre = WNConv1d(num_mels, c0, pre_conv_kernel_size, padding=_same_padding(pre_conv_kernel_size))
        self.ups = nn.ModuleList(
            WNConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes))
        )
        # Flat list, stage-major: resblocks[i * num_kernels + j] belongs to upsample stage i.
        self.resblocks = nn.ModuleList(
            ResBlock1(c0 // 2 ** (i + 1), k, d)
            for i in range(len(upsample_rates))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes)
        )
        c_last = c0 // 2 ** len(upsample_rates)
        self.conv_post = WNConv1d(c_last, 1, post_conv_kernel_size, padding=_same_padding(post_conv_kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_mels, F) features -> (B, 1, F · prod(upsample_rates)) waveform in [-1, 1]."""
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        return torch.tanh(self.conv_post(F.silu(x)))


# ---- the model ----


class ADaMoSHiFiGANV1(ModelMixin, ConfigMixin):
    """The v1 vocoder, state-dict compatible with the official `music_vocoder/` folder.

    The class keeps the official `_class_name` so a folder written by `save_pretrained` has the
    same config.json as the release. Defaults are the released config. Note the naming: `num_mels`
    is the width of the backbone output fed to the head (= dims[-1]); `n_mels` is the mel count.
    `drop_path_rate` is kept for config compatibility only (this module is inference-only).
    """

    # The mel filterbank and window stay float32 when loading in bf16/fp16 (log-mel precision).
    _keep_in_fp32_modules = ["mel_transform"]

    @register_to_config
    def __init__(
        self,
        input_channels: int = 128,
        depths: list[int] = (3, 3, 9, 3),
        dims: list[int] = (128, 256, 384, 512),
        drop_path_rate: float = 0.0,
        kernel_sizes: list[int] = (7,),
        upsample_rates: list[int] = (4, 4, 2, 2, 2, 2, 2),
        upsample_kernel_sizes: list[int] = (8, 8, 4, 4, 4, 4, 4),
        resblock_kernel_sizes: list[int] = (3, 7, 11, 13),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5)),
        num_mels: int = 512,
        upsample_initial_channel: int = 1024,
        use_template: bool = False,
        pre_conv_kernel_size: int = 13,
        post_conv_kernel_size: int = 13,
        sampling_rate: int = 44100,
        n_fft: int = 2048,
        win_length: int = 2048,
        hop_length: int = 512,
        f_min: int = 40,
        f_max: int = 16000,
        n_mels: int = 128,
    ):
        super().__init__()
        if use_template:
            raise ValueError("use_template=True (noise-template HiFi-GAN) is not supported; the release uses False")
        if len(kernel_sizes) != 1:
            raise ValueError(f"only one ConvNeXt kernel size is supported (the release uses [7]), got {kernel_sizes}")
        upsampling = 1
        for u in upsample_rates:
            upsampling *= u
        if upsampling != hop_length:
            raise ValueError(f"prod(upsample_rates) = {upsampling} must equal hop_length {hop_length}")
        self.backbone = ConvNeXtEncoder(input_channels, list(depths), list(dims), kernel_sizes[0])
        self.head = HiFiGANGenerator(num_mels, upsample_initial_channel, list(upsample_rates),
                                     list(upsample_kernel_sizes), list(resblock_kernel_sizes),
                                     [list(d) for d in resblock_dilation_sizes], pre_conv_kernel_size,
                                     post_conv_kernel_size)
        self.mel_transform = LogMelSpectrogram(sampling_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max)
        self.sampling_rate = sampling_rate

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Args: mel (B, n_mels, F) log-mel. Returns (B, 1, F · hop_length) waveform at `sampling_rate`."""
        return self.head(self.backbone(mel))

    @torch.no_grad()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """Same as forward, without gradients (reference `decode`)."""
        return self(mel)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., T) waveform at `sampling_rate` -> (..., n_mels, T // hop_length) log-mel."""
        return self.mel_transform(wav)


MusicVocoder = ADaMoSHiFiGANV1  # the descriptive name used elsewhere in acetune


def tiny_vocoder_config() -> dict:
    """The golden tiny vocoder (../shared/golden/codec/meta.json `vocoder_tiny_config`):
    official backbone depths, dims 16/16/32/32, three ×8 upsamples (kernels 16), 32 initial channels."""
    return dict(
        input_channels=128, depths=[3, 3, 9, 3], dims=[16, 16, 32, 32], drop_path_rate=0.0, kernel_sizes=[7],
        upsample_rates=[8, 8, 8], upsample_kernel_sizes=[16, 16, 16], resblock_kernel_sizes=[3, 7, 11, 13],
        resblock_dilation_sizes=[[1, 3, 5]] * 4, num_mels=32, upsample_initial_channel=32, use_template=False,
        pre_conv_kernel_size=13, post_conv_kernel_size=13, sampling_rate=44100, n_fft=2048, win_length=2048,
        hop_length=512, f_min=40, f_max=16000, n_mels=128,
    )
