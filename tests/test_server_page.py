"""The web page in a real headless browser (Debian's chromium via Selenium + chromedriver).

Skips, with the reason, when selenium, chromium or chromedriver is missing; it never downloads a browser or
driver (Selenium Manager is not used: both paths are given explicitly, and SE_OFFLINE is set).
Set MIMO_AUDIO_SCREENSHOT=path to keep the final screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mimo_audio.server import ServerSettings, create_app
from server_helpers import LiveServer

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _find_browser():
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'mimo-audio[dev]')")
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver); "
                    f"found browser={browser}, driver={driver}")
    return browser, driver


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    binary, driver_path = _find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1300",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _select(driver, task: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "task")).select_by_value(task)


def _run_task(driver, task: str, *, may_lack_audio: bool = False):
    """Run a task on the page. ``may_lack_audio``: a spoken result whose seed was not picked to speak; the random
    model may end before any audio, which the server answers 422 no_audio and the page shows as the status."""
    from selenium.webdriver.common.by import By

    _select(driver, task)
    driver.find_element(By.ID, "run").click()
    status = _wait(lambda: (s := driver.find_element(By.ID, "status").text) and not s.startswith("Running") and s,
                   what=f"{task} to finish")
    assert status.startswith("Done") or (may_lack_audio and "produced no audio" in status), status
    return status


def test_page_transcribe_speak_record(browser, tmp_path, fixture_path):
    from selenium.webdriver.common.by import By

    from mimo_audio.pipeline import MimoAudio

    mimo = MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu",
                                     dtype="float32")
    tokens, text = 12, "Hello from the browser test."
    # a seed for which this random-weight model speaks (found with the pipeline itself)
    seed, want = None, None
    for s in range(40):
        reply = mimo.run([mimo.prepare("speak", text=text, seed=s, max_new_tokens=tokens)], decode="stream")[0]
        if reply.audio is not None and reply.audio.numel():
            seed, want = s, reply.audio.numel() / reply.sample_rate
            break
    if seed is None:
        pytest.skip("the fixture model produced no speech in 40 seeds")
    audio_file = sorted((fixture_path / "audio").glob("speech_*.wav"))[0]
    with LiveServer(create_app(mimo, ServerSettings(max_new_tokens=64))) as srv:
        browser.get(srv.url + "/")
        _wait(lambda: browser.find_element(By.ID, "model-name").text == "mimo-audio", what="the model name")
        browser.find_element(By.ID, "file").send_keys(str(audio_file))
        _wait(lambda: audio_file.name in browser.find_element(By.ID, "input-info").text, what="the upload")
        for field, value in (("max-new-tokens", str(tokens)), ("seed", str(seed))):
            el = browser.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)

        _run_task(browser, "transcribe")  # streaming (the box is checked by default)
        assert browser.find_element(By.ID, "result-text").text.strip(), "no transcript shown"

        _select(browser, "speak")
        browser.find_element(By.ID, "text").send_keys(text)
        _run_task(browser, "speak")  # streamed PCM, played through WebAudio and assembled into a wav
        assert browser.find_element(By.ID, "download").is_displayed()
        duration = _wait(lambda: browser.execute_script(
            "const a = document.getElementById('result-audio'); return a.readyState >= 1 ? a.duration : 0;"),
            what="the audio element to load")
        assert duration == pytest.approx(want, abs=2e-3)

        browser.find_element(By.ID, "stream").click()  # non-streaming: the server's wav as is
        _run_task(browser, "speak")
        duration = _wait(lambda: browser.execute_script(
            "const a = document.getElementById('result-audio'); return a.readyState >= 1 ? a.duration : 0;"),
            what="the audio element to load")
        assert duration == pytest.approx(want, abs=2e-3)

        browser.find_element(By.ID, "instructions").send_keys("cheerful")
        _run_task(browser, "speak", may_lack_audio=True)
        _run_task(browser, "understand")
        if _run_task(browser, "talk", may_lack_audio=True).startswith("Done"):
            assert "MiMo:" in browser.find_element(By.ID, "conversation").text

        # the microphone (Chromium's fake device): record ~1 s, stop, the clip becomes the input
        browser.find_element(By.ID, "record").click()
        _wait(lambda: browser.find_element(By.ID, "stop").is_enabled(), what="recording to start")
        time.sleep(1.2)
        browser.find_element(By.ID, "stop").click()
        _wait(lambda: "recording" in browser.find_element(By.ID, "input-info").text, what="the recording")
        _select(browser, "transcribe")
        browser.find_element(By.ID, "stream").click()  # streaming again
        _run_task(browser, "transcribe")

        shot = Path(os.environ.get("MIMO_AUDIO_SCREENSHOT", tmp_path / "page.png"))
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 0
