"""One studio server, one headless Chromium and one tiny model set for the whole studio test module.

The browser is Debian's `chromium` + `chromium-driver` (`.ci/run` installs them with apt). Missing:
the browser tests skip with a message on a developer machine and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("ACETUNE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ACETUNE_CHROMEDRIVER", "/usr/bin/chromedriver")
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    return env


def make_songs(root: Path) -> Path:
    """3 demo songs (fork sidecars) + an ACE-Step 1.5 style song and a silent file in a sub-folder."""
    from acetune.audio.io import audio_write
    from acetune.dataset.demo_songs import SAMPLE_RATE, write_demo_songs

    songs = root / "songs"
    wavs = write_demo_songs(songs, count=3, seconds=(3.0,))
    more = songs / "more"
    more.mkdir()
    import soundfile as sf

    wav, sr = sf.read(wavs[1], dtype="float32")
    audio_write(more / "night.wav", wav[: 2 * sr].T, sr)
    (more / "night.caption.txt").write_text("synthwave, night drive", encoding="utf-8")
    (more / "night.lyrics.txt").write_text("[instrumental]", encoding="utf-8")
    (more / "night.json").write_text(json.dumps({"bpm": 124, "keyscale": "E minor", "language": "en"}), encoding="utf-8")
    audio_write(more / "silence.wav", np.zeros((2, SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
    return songs


@pytest.fixture(scope="module")
def studio_env(tmp_path_factory) -> dict:
    from acetune.stages.demo import DEMO_LORA_CONFIG, make_model_set

    root = tmp_path_factory.mktemp("studio")
    songs = make_songs(root)
    model = make_model_set(root / "models" / "ACE-Step-v1-tiny", seed=0, layers=2)
    lora = root / "models" / "lora.json"
    lora.write_text(json.dumps(DEMO_LORA_CONFIG), encoding="utf-8")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the browser", encoding="utf-8")
    return {"root": root, "songs": songs, "work": root / "work", "model": model, "lora": lora, "outside": outside}


@pytest.fixture(scope="module")
def server(studio_env):
    port = free_port()
    cmd = [sys.executable, "-m", "acetune", "studio", "--data_dir", str(studio_env["songs"]), "--workdir",
           str(studio_env["work"]), "--port", str(port), "--no-open_browser"]
    log = open(studio_env["root"] / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/api/info", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()  # a server that starts after the deadline must not outlive the test run
                proc.wait()
                log.close()
                pytest.fail("studio did not start: " + (studio_env["root"] / "server.log").read_text()[-2000:])
            time.sleep(0.3)
    yield {"url": url, "port": port, "proc": proc}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file() and shutil.which(CHROMEDRIVER)):
        msg = f"headless browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI requires them", pytrace=False)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
              "--autoplay-policy=no-user-gesture-required", "--window-size=1440,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
