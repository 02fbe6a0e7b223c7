"""Libraries' own messages while a file decodes are re-said once, naming the file (issue 20)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import soundfile as sf

from acetune.audio.io import decode
from acetune.audio.library_messages import attributed_to


def damaged_mp3(path, seconds: float = 3.0):
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal((int(44100 * seconds), 2)) * 0.1).astype("float32"), 44100, format="MP3")
    data = bytearray(path.read_bytes())
    for i in range(2000, len(data), 997):  # scribble over frame data: libmpg123 complains and resyncs
        data[i:i + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_decoder_lines_become_one_warning_naming_the_file(tmp_path, capfd, caplog):
    song = damaged_mp3(tmp_path / "glitchy song.mp3")
    with caplog.at_level(logging.WARNING):
        wav, sr = decode(song)
    assert sr == 44100 and wav.shape[0] == 2
    out, err = capfd.readouterr()
    assert "libmpg123" not in err and "Illegal Audio-MPEG-Header" not in err  # nothing bare on the terminal
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"{song}: the decoder printed '[src/libmpg123/") and "more line(s)" in warned[0]
    assert "re-encode it as .wav or .flac" in warned[0]


def test_a_clean_file_says_nothing(tmp_path, caplog):
    song = tmp_path / "clean.mp3"
    sf.write(song, np.zeros((44100, 2), "float32") + 0.01, 44100, format="MP3")
    with caplog.at_level(logging.WARNING):
        decode(song)
    assert caplog.records == []


def test_python_warnings_are_attributed_once_each(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), attributed_to(tmp_path / "a.wav"):
        for _ in range(3):
            warnings.warn("resampling from an odd rate", UserWarning, stacklevel=1)
        warnings.warn("deprecated path", DeprecationWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'a.wav'}: while decoding: UserWarning: resampling from an odd rate",
        f"{tmp_path / 'a.wav'}: while decoding: DeprecationWarning: deprecated path",
    ]


def test_stderr_is_restored_after_an_error(tmp_path, capfd):
    with pytest.raises(RuntimeError), attributed_to(tmp_path / "x.mp3"):
        raise RuntimeError("decoder crashed")
    import sys

    print("after", file=sys.stderr, flush=True)
    assert "after" in capfd.readouterr().err
