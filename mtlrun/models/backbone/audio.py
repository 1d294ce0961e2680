"""Audio encoders: a 1-D CNN on the raw waveform and a 2-D CNN on a log-(mel-)spectrogram.

Both read the audio layout of mtlrun.data.base.ModalityInfo, a float waveform [B, T] ([B, 1, T] works too),
and both are `StagedEncoder`s whose stages output 4-D feature maps [B, C, H, W], so every sharing
architecture applies to audio as it does to images: cross-stitch mixes the maps, MTAN's 1x1 / 3x3
attention convolutions run on them, MMoE / PLE build experts from the later stages. `encode` offers the
cells of the last feature map as tokens (time steps for the waveform CNN, frequency x time cells for
the spectrogram CNN).

Only torch is needed: the spectrogram (STFT, mel filterbank, log) is computed here, not by torchaudio.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from mtlrun.errors import UsageError
from mtlrun.checks import check_dropout, check_range, check_widths
from mtlrun.models.backbone.base import StagedEncoder

_KEY = "backbone.audio"


def _check_data(sample_rate, num_samples) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not sample_rate > 0:
        raise UsageError(f"the audio data gives sample_rate={sample_rate}; an audio encoder needs a positive number")
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                    or num_samples < 1):
        raise UsageError(f"the audio data gives num_samples={num_samples}; expected a positive integer or none")


def _waveform(x: torch.Tensor) -> torch.Tensor:
    """[B, T], [B, 1, T] or [B, 1, 1, T] -> [B, T]."""
    if x.dim() > 2:
        if any(s != 1 for s in x.shape[1:-1]):
            raise ValueError(f"expected a mono waveform [B, T] (or [B, 1, T]), got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], x.shape[-1])
    elif x.dim() != 2:
        raise ValueError(f"expected a mono waveform [B, T] (or [B, 1, T]), got shape {tuple(x.shape)}")
    return x


def _head(c_in: int, out_dim: int, dropout: float) -> nn.Sequential:
    # global average pooling: the clips' length is free, and a sound is the same sound wherever it starts
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, out_dim),
                         nn.ReLU(inplace=True))


class AsImage(nn.Module):
    """A waveform [B, T] (or [B, 1, T]) as a one-channel, one-row image [B, 1, 1, T]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _waveform(x)
        return x.reshape(x.shape[0], 1, 1, x.shape[1])


class WaveformCNN(StagedEncoder):
    """Strided 1-D convolutions over the raw waveform, one Conv-BN-ReLU stage per entry of `channels`.

    The convolutions are 2-D with (1 x kernel) kernels on a [B, 1, 1, T] view rather than Conv1d, so each
    stage's output is a 4-D map [B, C, 1, T'] like an image encoder's, which the stage-wise architectures
    expect (T' is about T / stride^(i+1)). `project` averages over time, then Linear + ReLU to `out_dim`.
    `sample_rate` / `num_samples` (from the data) are not needed: the receptive field is in samples.
    """

    def __init__(self, sample_rate: float, num_samples: int | None = None, channels=(32, 64, 128),
                 kernel: int = 9, stride: int = 4, out_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        _check_data(sample_rate, num_samples)
        channels = check_widths(f"{_KEY}.channels", channels)
        check_range(f"{_KEY}.kernel", kernel, 1)
        check_range(f"{_KEY}.stride", stride, 1)
        check_range(f"{_KEY}.out_dim", out_dim, 1)
        dropout = check_dropout(f"{_KEY}.dropout", dropout)
        self.sample_rate, self.num_samples = sample_rate, num_samples
        stages, c_in = [], 1
        for i, c_out in enumerate(channels):
            # padding kernel // 2: every stage keeps at least one time step, however short the clip
            block = [nn.Conv2d(c_in, c_out, (1, kernel), stride=(1, stride), padding=(0, kernel // 2), bias=False),
                     nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*([AsImage()] if i == 0 else []), *block))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.in_channels = 1
        self.stage_channels = channels
        self.project = _head(c_in, out_dim, dropout)
        self.out_dim = out_dim


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK mel filters [n_fft // 2 + 1, n_mels] (no area normalisation), as torchaudio's
    melscale_fbanks(mel_scale="htk", norm=None): `power [.., freq, time]` -> `fb.T @ power`."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(float(f_min)), _hz_to_mel(float(f_max)), n_mels + 2, dtype=torch.float64)
    edges = _mel_to_hz(mels)  # filter j rises from edges[j] to edges[j + 1], falls to edges[j + 2]
    width = edges[1:] - edges[:-1]
    slopes = edges[None, :] - freqs[:, None]  # [freq, n_mels + 2]
    rising = -slopes[:, :-2] / width[:-1]
    falling = slopes[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


class LogSpectrogram(nn.Module):
    """Waveform [B, T] -> per-sample normalised log power spectrogram [B, 1, F, frames].

    F = n_mels mel bands, or n_fft // 2 + 1 linear-frequency bins with n_mels=0. frames = 1 + T // hop_length
    (the STFT is centred, with zero padding, so any clip length works). Computed in float32 even under
    autocast: the power spectrum spans many orders of magnitude, more than bfloat16's 8 bits of mantissa
    resolve before the log. The normalisation (zero mean, unit variance over each sample's spectrogram)
    makes the encoder blind to the recording's gain.
    """

    def __init__(self, sample_rate: float, n_fft: int, hop_length: int, n_mels: int):
        super().__init__()
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        # constants derived from the options: non-persistent, so they stay out of checkpoints
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels) if n_mels else None,
                             persistent=False)

    @property
    def num_bins(self) -> int:
        return self.n_mels or self.n_fft // 2 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _waveform(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(x.float(), self.n_fft, self.hop_length, window=self.window, center=True,
                              pad_mode="constant", return_complex=True)  # [B, freq, frames]
            power = spec.real.square() + spec.imag.square()
            if self.mel_fb is not None:
                power = torch.matmul(self.mel_fb.t(), power)  # [B, n_mels, frames]
            log = torch.log(1e-6 + power)
            mean = log.mean(dim=(1, 2), keepdim=True)
            std = log.std(dim=(1, 2), keepdim=True, unbiased=False)
            return ((log - mean) / (std + 1e-5)).unsqueeze(1)


class SpectrogramCNN(StagedEncoder):
    """Log-(mel-)spectrogram, then Conv-BN-ReLU blocks over (frequency, time) as SmallCNN does over images.

    Stage 0 is the spectrogram followed by the first block (so the stage-wise architectures share it like
    any stage). Unlike SmallCNN every block, the first included, ends with a 2x2 max-pool (ceil mode: a side
    of 1 stays 1): a spectrogram is larger than the images SmallCNN is sized for, and pooling early makes
    the later, wider convolutions 4x cheaper while global pooling discards the positions anyway.
    `project` is global average pooling + Linear + ReLU. `n_mels=0` uses the n_fft // 2 + 1 linear-frequency
    bins instead of mel bands. `num_samples` (from the data, when clips have a fixed length) is only used
    to check that the analysis window fits in a clip.
    """

    def __init__(self, sample_rate: float, num_samples: int | None = None, n_fft: int = 256, hop_length: int = 64,
                 n_mels: int = 32, channels=(32, 64, 128), out_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        _check_data(sample_rate, num_samples)
        check_range(f"{_KEY}.n_fft", n_fft, 4)
        if num_samples is not None and n_fft > num_samples:
            raise UsageError(f"{_KEY}.n_fft={n_fft}: longer than the clips ({num_samples} samples); pick "
                             f"n_fft <= {num_samples}")
        check_range(f"{_KEY}.hop_length", hop_length, 1, n_fft,
                    " (at most n_fft, or samples between windows are never read)")
        n_bins = n_fft // 2 + 1
        check_range(f"{_KEY}.n_mels", n_mels, 0, n_bins,
                   f" (0 = linear-frequency bins; with {_KEY}.n_fft={n_fft} there are only {n_bins} FFT bins to "
                   f"share among the mel bands: lower n_mels or raise n_fft)")
        channels = check_widths(f"{_KEY}.channels", channels)
        check_range(f"{_KEY}.out_dim", out_dim, 1)
        dropout = check_dropout(f"{_KEY}.dropout", dropout)
        self.sample_rate, self.num_samples = sample_rate, num_samples
        frontend = LogSpectrogram(sample_rate, n_fft, hop_length, n_mels)
        if n_mels and not bool((frontend.mel_fb.amax(0) > 0).all()):
            empty = int((frontend.mel_fb.amax(0) == 0).sum())
            warnings.warn(f"{_KEY}.n_mels={n_mels}: {empty} of the mel bands fall between two FFT bins at "
                          f"sample_rate={sample_rate}, n_fft={n_fft} and stay empty; raise {_KEY}.n_fft or "
                          f"lower n_mels", stacklevel=2)
        stages, c_in = [], 1
        for i, c_out in enumerate(channels):
            block = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*([frontend] if i == 0 else []), *block, nn.MaxPool2d(2, ceil_mode=True)))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.in_channels = 1
        self.stage_channels = channels
        self.project = _head(c_in, out_dim, dropout)
        self.out_dim = out_dim

    @property
    def spectrogram(self) -> LogSpectrogram:
        """The spectrogram front end (the first module of stage 0)."""
        return self.stages[0][0]
