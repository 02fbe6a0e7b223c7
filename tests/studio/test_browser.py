"""The studio in a real browser (headless Chromium via Selenium), against `acetune studio` in a subprocess.

The tests run in file order on one server: table -> song page -> edits -> undo -> conflict -> bulk
-> stages (build, preprocess, train with a live curve, stop, resume, validation renders, export).
Set ACETUNE_STUDIO_SCREENSHOTS=<folder> to save the screenshots shown in docs/studio.md.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import time
import urllib.request
from pathlib import Path

import pytest

from acetune.dataset.demo_songs import SONGS

SHOTS = os.environ.get("ACETUNE_STUDIO_SCREENSHOTS")
RIVER = next(s for s in SONGS if s.stem == "river_song")


def wait(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last value {value!r})")
        time.sleep(0.25)


def click_when_ready(driver, selector: str, what: str) -> None:
    """Click the first element matching `selector`, retrying while the page re-renders it.

    The runs table is rebuilt on every poll, so an element found a moment ago can be gone at the click.
    """
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt():
        found = driver.find_elements("css selector", selector)
        if not found:
            return False
        try:
            found[0].click()
        except StaleElementReferenceException:
            return False
        return True

    wait(attempt, 15, what)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def shot(driver, name: str) -> None:
    """With ACETUNE_STUDIO_SCREENSHOTS set: a small PNG of the page (1100 px wide, 128 colours) for the docs."""
    if SHOTS:
        import io

        from PIL import Image

        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        image = image.resize((1100, round(image.height * 1100 / image.width)), Image.LANCZOS)
        image.quantize(colors=128).save(Path(SHOTS) / f"{name}.png", optimize=True)


def api(server, path: str):
    with urllib.request.urlopen(server["url"] + path, timeout=30) as r:
        return json.loads(r.read())


def table_ids(driver) -> list[str]:
    return js(driver, "return Array.from(document.querySelectorAll('#songs-table tbody tr')).map(r => r.dataset.id)")


def goto(driver, hash_: str) -> None:
    js(driver, "location.hash = arguments[0]", hash_)


def song_status(driver) -> str:
    return js(driver, "return document.getElementById('song-status').textContent")


# ---- songs ----------------------------------------------------------------------------------------

def test_table_lists_sorts_filters_and_searches(browser, server, studio_env):
    browser.get(server["url"] + "/")
    ids = wait(lambda: (lambda v: v if len(v) == 5 else None)(table_ids(browser)), 120, "5 table rows")
    assert set(ids) == {"lofi_rain.wav", "neon_drive.wav", "river_song.wav", "more/night.wav", "more/silence.wav"}
    row = {r["id"]: r for r in api(server, "/api/songs")["rows"]}
    assert row["more/night.wav"]["bpm"] == 124 and row["more/night.wav"]["keyscale"] == "E minor"
    assert row["more/night.wav"]["lyrics_status"] == "instrumental" and row["river_song.wav"]["lyrics_status"] == "lyrics"
    assert row["lofi_rain.wav"]["sample_rate"] == 48000 and row["lofi_rain.wav"]["channels"] == 2
    # the background analysis fills BPM/key/LUFS and flags the silent file
    wait(lambda: "5 songs measured" in js(browser, "return document.getElementById('analysis-status').textContent"),
         300, "audio analysis")
    row = {r["id"]: r for r in api(server, "/api/songs")["rows"]}
    assert any("silent" in p for p in row["more/silence.wav"]["problems"])
    assert row["lofi_rain.wav"]["measured"]["lufs"] < 0 and row["lofi_rain.wav"]["measured"]["keyscale"]
    browser.find_element("css selector", "#songs-table th[data-sort='duration']").click()  # ascending length
    wait(lambda: table_ids(browser)[0] == "more/silence.wav", 10, "sorted by length")
    browser.find_element("css selector", "#songs-table th[data-sort='duration']").click()  # descending
    wait(lambda: table_ids(browser)[-1] == "more/silence.wav", 10, "sorted by length, descending")
    browser.find_element("id", "search").send_keys("river")
    wait(lambda: table_ids(browser) == ["river_song.wav"], 10, "search")
    js(browser, "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'))")
    js(browser, "const f = document.getElementById('filter'); f.value = 'problems'; f.dispatchEvent(new Event('change'))")
    wait(lambda: table_ids(browser) == ["more/silence.wav"], 10, "problems filter")
    js(browser, "const f = document.getElementById('filter'); f.value = 'all'; f.dispatchEvent(new Event('change'))")
    wait(lambda: len(table_ids(browser)) == 5, 10, "all songs again")
    page = api(server, "/api/songs?per_page=2&page=3&sort=name")
    assert (page["pages"], page["total"], len(page["rows"])) == (3, 5, 1)
    shot(browser, "table")


def test_song_page_plays_audio(browser, server):
    browser.find_element("link text", "river_song.wav").click()
    duration = wait(lambda: js(browser, "const d = document.getElementById('song-audio').duration; "
                                        "return isFinite(d) && d > 0 ? d : null"), 30, "audio duration")
    assert abs(duration - 3.0) < 0.05
    result = browser.execute_async_script("const done = arguments[arguments.length - 1]; const a = "
                                          "document.getElementById('song-audio'); a.muted = true; "
                                          "a.play().then(() => done('ok')).catch(e => done(String(e)))")
    assert result == "ok"
    wait(lambda: js(browser, "return document.getElementById('song-audio').currentTime") > 0, 15, "playback")
    js(browser, "document.getElementById('song-audio').pause()")
    assert wait(lambda: js(browser, "const i = document.getElementById('song-wave'); return i.complete && i.naturalWidth"),
                30, "waveform image") == 900
    assert js(browser, "return document.getElementById('f-lyrics').value").startswith("[verse]")
    shot(browser, "song")


def test_edit_caption_and_bpm_writes_sidecars(browser, studio_env):
    songs = studio_env["songs"]
    js(browser, "document.getElementById('f-caption').value = arguments[0]; "
                "document.getElementById('f-bpm').value = '101'", "folk, acoustic guitar, studio edit")
    browser.find_element("id", "song-save").click()
    wait(lambda: song_status(browser).startswith("saved"), 15, "save")
    assert (songs / "river_song_prompt.txt").read_text(encoding="utf-8") == "folk, acoustic guitar, studio edit"
    assert json.loads((songs / "river_song.json").read_text(encoding="utf-8")) == {"bpm": 101}
    assert (songs / "river_song_lyrics.txt").read_text(encoding="utf-8") == RIVER.lyrics  # untouched


def test_undo_restores_previous_text(browser, studio_env):
    songs = studio_env["songs"]
    browser.find_element("id", "song-undo").click()
    wait(lambda: song_status(browser).startswith("undone"), 15, "undo")
    assert (songs / "river_song_prompt.txt").read_text(encoding="utf-8") == RIVER.prompt + "\n"
    assert not (songs / "river_song.json").exists()  # it did not exist before the edit
    assert js(browser, "return document.getElementById('f-caption').value") == RIVER.prompt
    assert js(browser, "return document.getElementById('song-undo').disabled")


def test_conflicting_change_on_disk_is_refused(browser, studio_env):
    prompt = studio_env["songs"] / "river_song_prompt.txt"
    original = prompt.read_text(encoding="utf-8")
    prompt.write_text("changed in another editor\n", encoding="utf-8")
    js(browser, "document.getElementById('f-caption').value = 'my edit'")
    browser.find_element("id", "song-save").click()
    wait(lambda: song_status(browser).startswith("Conflict"), 15, "conflict message")
    assert prompt.read_text(encoding="utf-8") == "changed in another editor\n"
    prompt.write_text(original, encoding="utf-8")


def test_bulk_add_tag(browser, server, studio_env):
    goto(browser, "#songs")
    wait(lambda: len(table_ids(browser)) == 5, 15, "table")
    for song in ("lofi_rain.wav", "more/night.wav"):  # the selection outlives a re-render of the rows
        js(browser, "document.querySelector(`tr[data-id='${arguments[0]}'] input.sel`).click()", song)
    wait(lambda: js(browser, "return document.getElementById('sel-count').textContent") == "2 selected", 10, "selection")
    browser.find_element("id", "bulk-tag").send_keys("studio tag")
    browser.find_element("id", "bulk-apply").click()
    wait(lambda: "2 of 2" in js(browser, "return document.getElementById('bulk-status').textContent"), 15, "bulk edit")
    songs = studio_env["songs"]
    assert (songs / "lofi_rain_prompt.txt").read_text(encoding="utf-8").rstrip().endswith(", studio tag")
    assert (songs / "more" / "night.caption.txt").read_text(encoding="utf-8") == "synthwave, night drive, studio tag"
    assert "studio tag" not in (songs / "neon_drive_prompt.txt").read_text(encoding="utf-8")
    wait(lambda: "studio tag" in js(browser, "return document.querySelector(\"tr[data-id='lofi_rain.wav']\").textContent"),
         10, "table shows the new tag")


def test_caption_selection_runs_caption_on_the_selected_songs(browser, server, studio_env):
    """"Caption selection…": the caption form with --data_dir/--files from the selection (here: BPM/key only)."""
    goto(browser, "#songs")
    wait(lambda: len(table_ids(browser)) == 5, 15, "table")
    js(browser, "table.selected.clear(); loadTable()")
    wait(lambda: js(browser, "return document.getElementById('sel-count').textContent") == "0 selected", 10, "cleared")
    js(browser, "document.querySelector(`tr[data-id='neon_drive.wav'] input.sel`).click()")
    browser.find_element("id", "bulk-caption").click()
    wait(lambda: "1 song(s) selected" in js(browser, "return document.getElementById('stage-form').textContent"), 30,
         "caption form for the selection")
    js(browser, "const t = document.getElementById('arg-tags'); t.checked = false; t.dispatchEvent(new Event('change'))")
    wait(lambda: "--no-tags" in js(browser, "return document.getElementById('stage-command').textContent"), 15, "--no-tags")
    browser.find_element("id", "stage-run").click()
    run = wait(lambda: next((r for r in api(server, "/api/runs") if r["stage"] == "caption"), None), 30, "caption run")
    run = wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] == run["id"] and r["status"] != "running"),
                            None), 300, "caption to finish")
    assert run["status"] == "finished" and run["argv"][-2:] == ["--files", "neon_drive.wav"], run
    assert run["progress"].startswith("caption: 100%|")
    songs = studio_env["songs"]
    assert json.loads((songs / "neon_drive.json").read_text(encoding="utf-8"))["bpm"] > 0
    assert not (songs / "lofi_rain.json").exists() and not (songs / "river_song.json").exists()


# ---- stages and the training monitor ----------------------------------------------------------

def set_fields(driver, values: dict) -> None:
    for name, value in values.items():
        js(driver, "const e = document.getElementById('arg-' + arguments[0]); "
                   "if (e.type === 'checkbox') e.checked = arguments[1]; else e.value = arguments[1]; "
                   "e.dispatchEvent(new Event('change'))", name, value)


def open_form(driver, stage: str) -> None:
    goto(driver, f"#stages/{stage}")
    wait(lambda: js(driver, "return document.getElementById('stage-command').textContent.startsWith(arguments[0])",
                    f"acetune {stage}"), 30, f"{stage} form")


def run_form(driver, server, stage: str, values: dict, timeout: float = 900) -> dict:
    """Fill the form, check the shown command, press Run, wait for the run to end; returns the run."""
    open_form(driver, stage)
    set_fields(driver, values)
    wait(lambda: all(f"--{k}" in js(driver, "return document.getElementById('stage-command').textContent")
                     for k, v in values.items() if v not in (False, "")), 15, "command line")
    before = {r["id"] for r in api(server, "/api/runs")}
    driver.find_element("id", "stage-run").click()
    run = wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] not in before), None), 30, "run start")
    return wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] == run["id"] and
                              r["status"] not in ("running", "stopping")), None), timeout, f"{stage} to finish")


def curve_points(driver) -> int:
    return int(js(driver, "return document.getElementById('curve-loss').dataset.points || '0'"))


def test_stages_train_monitor_stop_resume_export(browser, server, studio_env):
    from acetune.cli import parse_args
    from acetune.stages import train

    work, env = studio_env["work"], studio_env
    run = run_form(browser, server, "build-dataset", {})  # the form suggests songs -> work/dataset
    assert run["status"] == "finished", run
    run = run_form(browser, server, "preprocess", {"checkpoint_dir": str(env["model"]), "device": "cpu",
                                                    "prompt_variants": "1", "num_workers": "0"})
    assert run["status"] == "finished", run
    assert (work / "prep").is_dir()

    # 200 steps: the stop below lands after a few seconds of training, well before the end even on an idle
    # machine (a tiny step takes 0.1-1.5 s); the same command must resume (a changed one is refused).
    # A checkpoint every 10 steps, not every step: a tiny step's save costs about as much CPU as the step
    # itself, and the stop saves the step it stopped at either way (training/loop.py), which is asserted.
    steps = 200
    values = {"checkpoint_dir": str(env["model"]), "lora_config_path": str(env["lora"]), "device": "cpu",
              "precision": "32", "max_steps": str(steps), "every_n_train_steps": "10", "logger": "none",
              "learning_rate": "0.005", "warmup_steps": "1", "validation_prompt": RIVER.prompt,
              "validation_every": str(steps), "validation_duration": "0.5", "gradient_checkpointing": "off"}
    open_form(browser, "train")
    set_fields(browser, values)
    command = wait(lambda: (lambda c: c if f"--max_steps {steps}" in c else None)(
        js(browser, "return document.getElementById('stage-command').textContent")), 15, "train command")
    argv = shlex.split(command)
    assert argv[:2] == ["acetune", "train"] and "--gradient_checkpointing off" in command
    args = parse_args(train.Args, argv[2:], "acetune train")  # the shown command is a valid CLI command
    assert args.max_steps == steps and args.validation_prompt == [RIVER.prompt]
    shot(browser, "stages")
    browser.find_element("id", "stage-run").click()
    run = wait(lambda: next((r for r in api(server, "/api/runs") if r["stage"] == "train"), None), 30, "train run")
    out = Path(run["output_dir"])
    assert out == work / "runs" / "acetune_lora"

    # the monitor's loss curve gains points while the run trains
    js(browser, "studio.state.monitorDir = arguments[0]; location.hash = '#monitor'", str(out))
    first = wait(lambda: curve_points(browser) >= 2 and curve_points(browser), 600, "first loss points")
    wait(lambda: curve_points(browser) > first, 600, "more loss points")

    # stop (SIGINT, as Ctrl-C) once a checkpoint exists, then resume
    wait(lambda: any(out.glob("step-*")), 600, "a checkpoint")  # (older ones are pruned: --save_last 5)
    goto(browser, "#stages/train")
    click_when_ready(browser, f"tr[data-run='{run['id']}'] button.stop", "stop button")
    stopped = wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] == run["id"]
                                 and r["status"] not in ("running", "stopping")), None), 300, "run to stop")
    assert stopped["status"] == "stopped" and stopped["returncode"] == 130, stopped
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("step-*"))
    assert saved and saved[-1] < steps
    stop_log = api(server, f"/api/runs/{run['id']}/log")["text"]  # the step it stopped at was saved (COORD)
    assert f"after step {saved[-1]}: saved {out / f'step-{saved[-1]:06d}'}" in stop_log, stop_log[-1500:]
    click_when_ready(browser, f"tr[data-run='{run['id']}'] button.resume", "resume button")
    resumed = wait(lambda: next((r for r in api(server, "/api/runs") if r["resumed_from"] == run["id"]), None), 30,
                   "resumed run")
    assert resumed["argv"][-1] == "--resume"
    done = wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] == resumed["id"]
                              and r["status"] not in ("running", "stopping")), None), 900, "resumed run to finish")
    assert done["status"] == "finished", api(server, f"/api/runs/{done['id']}/log")["text"][-3000:]
    log = api(server, f"/api/runs/{done['id']}/log")["text"]
    assert f"resumed from {out / f'step-{saved[-1]:06d}'}" in log
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["step"] for x in lines] == list(range(1, steps + 1))  # resume dropped the steps it redid
    assert all("train/loss" in x and "train/lr" in x for x in lines)

    # validation renders at step 0 and the last step, side by side, playable
    js(browser, "studio.state.monitorDir = arguments[0]; location.hash = '#monitor'", str(out))
    wait(lambda: curve_points(browser) == steps, 60, "every loss point")
    wait(lambda: js(browser, "return document.getElementById('cmp-b').options.length") == 2, 30, "two render steps")
    js(browser, "const b = document.getElementById('cmp-b'); b.value = arguments[0]; b.dispatchEvent(new Event('change'))",
       str(steps))
    durations = wait(lambda: (lambda d: d if len(d) == 2 and all(x and x > 0 for x in d) else None)(js(
        browser, "return Array.from(document.querySelectorAll('.val-audio')).map(a => isFinite(a.duration) ? a.duration : null)")),
        30, "validation audio")
    expected = []
    for step in (0, steps):  # what was written: the render length rounds to whole latent frames
        meta = json.loads((out / "validation" / f"step-{step:06d}" / "prompts.json").read_text(encoding="utf-8"))
        expected.append(meta["renders"][0]["samples"] / meta["sample_rate"])
    assert durations == pytest.approx(expected, abs=1e-3) and 0.4 < expected[0] <= 0.5, (durations, expected)
    played = browser.execute_async_script("const done = arguments[arguments.length - 1]; const a = "
                                          "document.querySelectorAll('.val-audio')[1]; a.muted = true; "
                                          "a.play().then(() => done('ok')).catch(e => done(String(e)))")
    assert played == "ok"
    shot(browser, "monitor")

    # export the last checkpoint for ComfyUI
    js(browser, "document.getElementById('ckpt-select').value = arguments[0]", str(out / f"step-{steps:06d}"))
    browser.find_element("id", "export-btn").click()
    export = wait(lambda: next((r for r in api(server, "/api/runs") if r["stage"] == "export"), None), 30, "export run")
    export = wait(lambda: next((r for r in api(server, "/api/runs") if r["id"] == export["id"]
                                and r["status"] != "running"), None), 300, "export to finish")
    assert export["status"] == "finished"
    assert (work / "exports" / f"acetune_lora-step-{steps:06d}_comfyui.safetensors").stat().st_size > 0


# ---- safety ---------------------------------------------------------------------------------------

def raw_get(server, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of ../ or %2e)."""
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", f"{host}:{server['port']}")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


@pytest.mark.parametrize("path", [
    "/files/data/../outside/secret.txt", "/files/data/more/../../outside/secret.txt",
    "/files/data/%2e%2e/outside/secret.txt", "/files/data/%2E%2E%2Foutside%2Fsecret.txt",
    "/files/data/..%2f..%2foutside/secret.txt", "/files/data/%252e%252e/outside/secret.txt",
    "/files/data//etc/passwd", "/files/data/%2fetc%2fpasswd", "/files/data/..%5c..%5coutside%5csecret.txt",
    "/files/data/C:/Windows/win.ini", "/files/work/../outside/secret.txt", "/files/data/link_out.txt",
    "/files/data/dir_out/secret.txt",
])
def test_path_traversal_refused(server, studio_env, path):
    songs = studio_env["songs"]
    if not (songs / "link_out.txt").is_symlink():
        (songs / "link_out.txt").symlink_to(studio_env["outside"] / "secret.txt")
        (songs / "dir_out").symlink_to(studio_env["outside"], target_is_directory=True)
    status, body = raw_get(server, path)
    assert status in (403, 404) and b"not for the browser" not in body, (path, status, body[:200])
    assert raw_get(server, "/files/data/lofi_rain_prompt.txt")[0] == 200  # the control: a file inside is served


def test_requests_for_another_host_name_are_refused(server):
    status, body = raw_get(server, "/api/info", host="attacker.example")  # DNS rebinding
    assert status == 403 and b"localhost" in body
