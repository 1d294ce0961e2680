"""Audio files of a table: WAV always, FLAC / OGG with soundfile (pip install "mtlrun[audio]"), and a file at
another rate resampled to the input's sample_rate instead of refused. Files are made in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest

from mtlrun.data import media
from mtlrun.data.table import Table
from mtlrun.errors import ConfigError


def sine(freq: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def peak_hz(wave, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_flac_at_the_input_rate_decodes_to_the_source_samples(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    source = sine(440, 8000)
    soundfile.write(tmp_path / "a.flac", np.stack([source, source], 1), 8000, subtype="PCM_16")  # stereo
    out = media.load_audio(str(tmp_path / "a.flac"), sample_rate=8000, num_samples=5000)
    assert out.shape == (5000,)
    np.testing.assert_allclose(out[:4000].numpy(), source, atol=1 / 32768)  # lossless, 16-bit
    assert not out[4000:].any()  # zero-padded


@pytest.mark.parametrize("suffix,subtype", [(".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_a_file_at_another_rate_is_resampled_keeping_its_length_and_frequency(tmp_path, suffix, subtype):
    soundfile = pytest.importorskip("soundfile")
    source = sine(440, 16000)  # 0.5 s at 16 kHz
    path = tmp_path / f"a{suffix}"
    soundfile.write(path, source, 16000, subtype=subtype)
    out = media.load_audio(str(path), sample_rate=8000, num_samples=4000).numpy()  # 0.5 s at 8 kHz
    assert abs(peak_hz(out, 8000) - 440) <= 8000 / 4000  # one FFT bin
    middle = slice(400, 3600)  # away from the filter's edge effects
    expected = sine(440, 8000)
    if subtype == "PCM_16":
        np.testing.assert_allclose(out[middle], expected[middle], atol=0.01)
    else:  # lossy: the same tone at about the same level
        assert abs(np.sqrt(np.mean(out[middle] ** 2)) - np.sqrt(np.mean(expected[middle] ** 2))) < 0.05


def test_a_wav_at_another_rate_is_resampled_without_soundfile(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "has_soundfile", lambda: False)
    media.write_wav(tmp_path / "a.wav", sine(1000, 22050), 22050)
    out = media.load_audio(str(tmp_path / "a.wav"), sample_rate=8000, num_samples=4000).numpy()
    assert abs(peak_hz(out, 8000) - 1000) <= 2
    np.testing.assert_allclose(out[400:3600], sine(1000, 8000)[400:3600], atol=0.01)


def test_flac_without_soundfile_is_a_config_error_with_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "has_soundfile", lambda: False)
    for i in range(3):
        (tmp_path / f"c{i}.flac").write_bytes(b"fLaC")
    (tmp_path / "m.csv").write_text("split,clip,y\ntrain,c0.flac,0\nval,c1.flac,0\ntest,c2.flac,0\n")
    expected = r"row 1 \(line 2\), column 'clip': .*c0\.flac: reading FLAC / OGG audio needs the soundfile package: "
    with pytest.raises(ConfigError, match=expected + r'pip install "mtlrun\[audio\]"'):
        Table(path=str(tmp_path / "m.csv"),
              inputs={"clip": {"type": "audio", "column": "clip", "sample_rate": 8000, "num_samples": 100}},
              targets={"y": {"type": "classification", "column": "y"}}).spec
    with pytest.raises(media.MediaError, match=r'pip install "mtlrun\[audio\]"'):
        media.load_audio(str(tmp_path / "c0.flac"), 8000, 100)
