"""Reading the files a table points at: images, segmentation masks, depth maps and audio clips.

Every reader opens and closes its file within the call (nothing is held open between items, so
DataLoader worker processes are safe) and raises `MediaError` with a short reason on failure; the caller
adds which manifest row and column the file came from.

Layouts returned (per sample):
- image: uint8 [C, H, W], C = 1 (grey) or 3 (RGB), resized to `size` with Pillow's antialiased bilinear filter;
- segmentation mask: int64 [H, W] of class ids, -1 = ignore. The file holds one class id per pixel (PNG
  mode L or P (palette index = class id), or 16-bit I;16 for more than 256 classes); pixels equal to
  `ignore_index` (255 by default) become -1. Resized with nearest neighbour, so no id is ever blended;
- depth: float32 [1, H, W], 0 = invalid. A `.npy` float array [H, W] (or [1, H, W]) is taken as is; a
  16-bit PNG (mode I;16 / I) is multiplied by `png_scale` (0.001: millimetres to metres). NaN, inf and
  negative values become 0. Resized with nearest neighbour, so invalid pixels never mix with valid ones;
- audio: float32 [num_samples] mono waveform: a `.wav` (PCM 8/16/24/32-bit or IEEE float 32/64-bit; channels
  averaged; integer samples scaled to [-1, 1]), a `.flac` or `.ogg` (with the soundfile package: pip install
  "mtlrun[audio]"; it also reads the WAV encodings the built-in reader does not), or a 1-D `.npy` float array
  taken as already at `sample_rate`. A file at another rate is resampled to `sample_rate` (polyphase,
  scipy.signal.resample_poly; logged once per rate). Cut to its first `num_samples` samples or zero-padded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SOUNDFILE_SUFFIXES = (".flac", ".ogg")  # read with soundfile (the `audio` extra)
AUDIO_SUFFIXES = (".wav", ".npy", *SOUNDFILE_SUFFIXES)
AUDIO_EXTRA = 'pip install "mtlrun[audio]"'
_logged_rates: set[tuple[int, int]] = set()
DEPTH_SUFFIXES = (".npy", ".png")
MASK_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


class MediaError(ValueError):
    """A file that exists but cannot be used; the message says why, without the file's name."""


def _open_image(path: str):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise MediaError(f"{type(exc).__name__}: {exc}") from exc
    return image


def image_size(path: str) -> tuple[int, int]:
    """(H, W) from the file's header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            w, h = image.size
    except Exception as exc:
        raise MediaError(f"{type(exc).__name__}: {exc}") from exc
    return h, w


def load_image(path: str, size: Sequence[int], channels: int) -> torch.Tensor:
    """uint8 [channels, H, W]: the file decoded as grey (1) or RGB (3) and resized to size = (H, W)."""
    from PIL import Image

    h, w = size
    image = _open_image(path)
    with image:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # a transparent palette entry would otherwise turn black
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits, not a clip at 255
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _nearest(array: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[..., h, w] -> [..., H, W] by nearest neighbour (exact for integer ids below 2**24)."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    lead = array.shape[:-2]
    flat = array.reshape(1, -1, *array.shape[-2:]).to(torch.float32)
    out = F.interpolate(flat, size=tuple(size), mode="nearest-exact")
    return out.reshape(*lead, *size).to(array.dtype)


def load_mask(path: str, size: Sequence[int], num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """int64 [H, W] of class ids in 0..num_classes-1, -1 where the file holds `ignore_index`."""
    image = _open_image(path)
    with image:
        if image.mode not in MASK_MODES:
            raise MediaError(f"a mask must be one channel of class ids (PNG mode L, P or I;16), this one is "
                             f"{image.mode}; write the class id of each pixel, not a colour")
        ids = torch.from_numpy(np.asarray(image).astype(np.int64))
    if ignore_index is not None:
        ids = torch.where(ids == ignore_index, torch.full_like(ids, -1), ids)
    bad = (ids >= num_classes) | (ids < -1)
    if bool(bad.any()):
        values = sorted(set(ids[bad].unique().tolist()))[:5]
        raise MediaError(f"holds class id(s) {values} outside 0..{num_classes - 1} (num_classes={num_classes}"
                         + (f", ignore_index={ignore_index}" if ignore_index is not None else "") + ")")
    return _nearest(ids, size)


def load_depth(path: str, size: Sequence[int], png_scale: float) -> torch.Tensor:
    """float32 [1, H, W]: depth, 0 where invalid (NaN, inf, <= 0 in the file)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise MediaError(f"{type(exc).__name__}: {exc}") from exc
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise MediaError(f"a depth .npy must be a numeric array [H, W], got {array.dtype} {list(array.shape)}")
        depth = torch.from_numpy(array.astype(np.float32))
    else:
        image = _open_image(path)
        with image:
            if image.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                raise MediaError(f"a depth PNG must be 16-bit grey (mode I;16), this one is {image.mode}")
            depth = torch.from_numpy(np.asarray(image).astype(np.float32) * float(png_scale))
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
    return _nearest(depth, size).unsqueeze(0)


def read_wav(path: str) -> tuple[int, np.ndarray]:
    """(sample rate, float32 [frames, channels]) of a RIFF/WAVE file; integers scaled to [-1, 1]."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise MediaError("not a RIFF/WAVE file")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        chunk, length = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + length]
        if chunk == b"fmt ":
            if len(body) < 16:
                raise MediaError("truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag starts the sub-format
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            samples = body
        pos += 8 + length + (length & 1)
    if fmt is None or samples is None:
        raise MediaError("no fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1:
        raise MediaError(f"{channels} channels")
    width = bits // 8
    usable = len(samples) // (width * channels) * width * channels
    raw = samples[:usable]
    if tag == 1 and bits == 8:
        wave = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and bits == 16:
        wave = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        wave = (np.where(value >= 1 << 23, value - (1 << 24), value)).astype(np.float32) / float(1 << 23)
    elif tag == 1 and bits == 32:
        wave = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    elif tag == 3 and bits in (32, 64):
        wave = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise MediaError(f"unsupported WAV encoding (format tag {tag}, {bits} bits); use PCM 8/16/24/32-bit, "
                         f"float 32/64-bit or a .npy waveform")
    return rate, wave.reshape(-1, channels)


def load_audio(path: str, sample_rate: int, num_samples: int) -> torch.Tensor:
    """float32 [num_samples]: the mono waveform, cut or zero-padded at the end."""
    suffix = Path(path).suffix.lower()
    if suffix in (".wav", *SOUNDFILE_SUFFIXES):
        if suffix == ".wav":
            try:
                rate, frames = read_wav(path)
            except MediaError:
                if not has_soundfile():
                    raise
                rate, frames = read_soundfile(path)  # an encoding only libsndfile knows (ADPCM, ...)
        else:
            rate, frames = read_soundfile(path)
        wave = resample(frames.mean(axis=1), rate, sample_rate)
    elif suffix == ".npy":
        try:
            wave = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise MediaError(f"{type(exc).__name__}: {exc}") from exc
        if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.number):
            raise MediaError(f"an audio .npy must be a 1-D numeric waveform, got {wave.dtype} {list(wave.shape)}")
        wave = wave.astype(np.float32)
    else:
        raise MediaError(f"audio files must be {' or '.join(AUDIO_SUFFIXES)}, not {suffix or 'without suffix'}")
    if not np.isfinite(wave).all():
        raise MediaError("holds NaN or inf samples")
    out = torch.zeros(num_samples, dtype=torch.float32)
    n = min(num_samples, len(wave))
    out[:n] = torch.from_numpy(np.ascontiguousarray(wave[:n]))
    return out


def has_soundfile() -> bool:
    import importlib.util

    return importlib.util.find_spec("soundfile") is not None


def read_soundfile(path: str) -> tuple[int, np.ndarray]:
    """(sample rate, float32 [frames, channels]) of any file libsndfile reads (FLAC, OGG/Vorbis, WAV, ...)."""
    if not has_soundfile():
        raise MediaError(f"reading {Path(path).suffix} audio needs the soundfile package: {AUDIO_EXTRA}")
    import soundfile

    try:
        frames, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile.LibsndfileError and friends: a file it cannot decode
        raise MediaError(f"{type(exc).__name__}: {exc}") from exc
    return int(rate), frames


def resample(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """`wave` (1-D) from `rate` to `sample_rate` Hz with a polyphase filter; as is when the rates agree."""
    if rate == sample_rate:
        return wave
    import logging
    from math import gcd

    from scipy.signal import resample_poly

    if (rate, sample_rate) not in _logged_rates:
        _logged_rates.add((rate, sample_rate))
        logging.getLogger("mtlrun").info(f"audio: resampling files at {rate} Hz to the input's sample_rate "
                                         f"{sample_rate} Hz (logged once per rate)")
    g = gcd(rate, sample_rate)
    return resample_poly(wave.astype(np.float64), sample_rate // g, rate // g).astype(np.float32)


def write_wav(path, wave: np.ndarray, sample_rate: int) -> None:
    """A mono 16-bit PCM WAV of `wave` (floats in [-1, 1]); used by examples and tests."""
    pcm = (np.clip(np.asarray(wave, dtype=np.float64), -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                         sample_rate * 2, 2, 16, b"data", len(pcm))
    with open(path, "wb") as f:
        f.write(header + pcm)
