"""Stage-2 discriminators (SPEC §8.1): a Multi-Period Discriminator (periods 2, 3, 5, 7, 11; HiFi-GAN-like) and a
multi-scale STFT discriminator (EnCodec-like, complex spectrogram input), spectral norm on every layer, and the
hinge / feature-matching losses of SPEC §8.1. Sizes are settings (``mpd_channels``, ``stft_channels``, ``stft_ffts``);
the paper does not give them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

PERIODS = (2, 3, 5, 7, 11)


class PeriodDiscriminator(nn.Module):
    """The waveform folded into ``(frames, period)`` columns, strided 2-D convolutions along time."""

    def __init__(self, period: int, channels: int, max_channels: int):
        super().__init__()
        self.period = period
        widths = [min(channels * 4 ** i, max_channels) for i in range(4)] + [max_channels]
        convs, cin = [], 1
        for i, w in enumerate(widths):
            stride = (3, 1) if i < 4 else (1, 1)
            convs.append(spectral_norm(nn.Conv2d(cin, w, (5, 1), stride, padding=(2, 0))))
            cin = w
        self.convs = nn.ModuleList(convs)
        self.out = spectral_norm(nn.Conv2d(cin, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor):
        B, T = wav.shape
        pad = (-T) % self.period
        x = F.pad(wav, (0, pad), mode="reflect" if pad < T else "constant")
        x = x.view(B, 1, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        x = self.out(x)
        feats.append(x)
        return x.flatten(1), feats


class STFTDiscriminator(nn.Module):
    """Real and imaginary STFT parts as two channels, 2-D convolutions dilated along time, strided along frequency."""

    def __init__(self, n_fft: int, channels: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        convs = [spectral_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4)))]
        for d in (1, 2, 4):
            convs.append(spectral_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4))))
        convs.append(spectral_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.out = spectral_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor):
        spec = torch.stft(wav.float(), self.n_fft, self.hop, window=self.window, normalized=True, return_complex=True)
        x = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # (B, 2, frames, freq)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        x = self.out(x)
        feats.append(x)
        return x.flatten(1), feats


class Discriminators(nn.Module):
    """All ``K`` sub-discriminators: MPD (five periods) + one STFT discriminator per FFT size."""

    def __init__(self, mpd_channels: int = 32, mpd_max_channels: int = 1024, stft_channels: int = 32,
                 stft_ffts=(2048, 1024, 512)):
        super().__init__()
        self.subs = nn.ModuleList([PeriodDiscriminator(p, mpd_channels, mpd_max_channels) for p in PERIODS]
                                  + [STFTDiscriminator(int(n), stft_channels) for n in stft_ffts])

    def forward(self, wav: torch.Tensor):
        """-> a list of ``(logits (B, n), features [maps])``, one per sub-discriminator."""
        return [d(wav) for d in self.subs]


def disc_loss(real, fake) -> torch.Tensor:
    """``L_D = (1/K) Σ_k [E max(0, 1 − D_k(x)) + E max(0, 1 + D_k(x̂))]``."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)) / len(real)


def adv_loss(fake) -> torch.Tensor:
    """``L_adv = −(1/K) Σ_k E D_k(x̂)``."""
    return -sum(f.mean() for f, _ in fake) / len(fake)


def fm_loss(real, fake) -> torch.Tensor:
    """``L_fm = (1/K) Σ_k (1/L_k) Σ_l ‖f_kl(x) − f_kl(x̂)‖₁`` (each L1 a mean over the map; real maps detached)."""
    total = 0.0
    for (_, fr), (_, ff) in zip(real, fake):
        total = total + sum(F.l1_loss(b, a.detach()) for a, b in zip(fr, ff)) / len(fr)
    return total / len(real)
