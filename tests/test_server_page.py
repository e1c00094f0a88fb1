"""The web page in a real headless browser (Debian's chromium via Selenium + chromedriver).

One browser session serves the whole module. Each view is driven end to end against the fixture's tiny
random-weight models (their output is gibberish, so the checks are about structure: what the page shows equals
what the server or the pipeline produced); the error paths (413, 429, 401, Stop) run against the fake backend of
server_helpers. A screenshot of each view is written to $MIMO_AUDIO_SCREENSHOTS (a folder), else to a folder
under pytest's tmp path.

Skips, with the reason, when selenium, chromium or chromedriver is missing; it never downloads a browser or
driver (Selenium Manager is not used: both paths are given explicitly, and SE_OFFLINE is set).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from mimo_audio.server import ServerSettings, create_app
from server_helpers import FakeBackend, LiveServer, wav_bytes

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TOKENS = 12  # max new tokens for the fixture model's runs: enough for some speech, fast on the CPU


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


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}", "--window-size=1000,1200",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def no_script_errors(request):
    """After each browser test: the page logged no script error (refused requests are logged by Chromium as
    failed resource loads; those are the tests' point and are left out)."""
    yield
    if "browser" not in request.fixturenames:
        return
    logs = request.getfixturevalue("browser").get_log("browser")
    errors = [e["message"] for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("MIMO_AUDIO_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def mimo(fixture_path):
    from mimo_audio.pipeline import MimoAudio

    return MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu",
                                     dtype="float32")


@pytest.fixture(scope="module")
def live(mimo):
    with LiveServer(create_app(mimo, ServerSettings(max_new_tokens=64))) as srv:
        yield srv


@pytest.fixture(scope="module")
def clips(fixture_path) -> list[Path]:
    found = sorted((fixture_path / "audio").glob("speech_*_24k.wav"))
    assert len(found) >= 2, "the fixture needs two speech clips"
    return found


def _speaking_seed(mimo, task, **kwargs):
    """A seed for which the random-weight model speaks (found with the pipeline itself), and its audio length."""
    for seed in range(60):
        reply = mimo.run([mimo.prepare(task, seed=seed, max_new_tokens=TOKENS, **kwargs)], decode="stream")[0]
        if reply.audio is not None and reply.audio.numel():
            return seed, reply.audio.numel() / reply.sample_rate
    pytest.skip(f"the fixture model produced no speech for {task} {sorted(kwargs)} in 60 seeds")


# ------------------------------------------------------------------------------------------ page helpers
def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _id(driver, id_):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def _open(driver, srv, tab=None):
    driver.get("about:blank")  # a fresh page (only the #fragment differing would not reload it)
    driver.get(srv.url + "/" + (f"#{tab}" if tab else ""))
    _wait(lambda: _id(driver, "ready-state").text == "ready", what="the server to show as ready")


def _options(driver, *, seed=None, tokens=TOKENS, stream=True):
    if not _id(driver, "options").get_attribute("open"):
        _id(driver, "options").find_element("css selector", "summary").click()
    for field, value in (("max-new-tokens", tokens), ("seed", seed)):
        el = _id(driver, field)
        el.clear()
        if value is not None:
            el.send_keys(str(value))
    box = _id(driver, "stream")
    if box.is_selected() != stream:
        box.click()


def _upload(driver, clip_id, path):
    _id(driver, f"{clip_id}-file").send_keys(str(path))
    return _wait(lambda: path.name in _id(driver, f"{clip_id}-info").text and _id(driver, f"{clip_id}-info").text,
                 what=f"{path.name} in {clip_id}")


def _run(driver, view, button=None, expect="Done"):
    _id(driver, button or f"{view}-run").click()
    status = _wait(lambda: (s := _id(driver, f"{view}-status").text) and not s.startswith("Working") and s,
                   what=f"{view} to finish")
    assert status.startswith(expect), status
    return status


def _duration(driver, audio_id):
    return _wait(lambda: driver.execute_script(
        "const a = document.getElementById(arguments[0]); return a.readyState >= 1 ? a.duration : 0;", audio_id),
        what=f"{audio_id} to load")


def _ink(driver, canvas_id) -> float:
    """The share of a waveform canvas's columns with ink away from its mid line (0 for an empty clip)."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        if (!c.width || !c.height) return 0;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, mid = c.height / 2;
        const bg = [d[0], d[1], d[2]];
        let cols = 0;
        for (let x = 0; x < c.width; x++) for (let y = 0; y < c.height; y++) {
          if (Math.abs(y - mid) < 3) continue;
          const i = (y * c.width + x) * 4;
          if (d[i] !== bg[0] || d[i + 1] !== bg[1] || d[i + 2] !== bg[2]) { cols++; break; }
        }
        return cols / c.width;""", canvas_id)


def _shot(driver, shots, name):
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 0
    return path


def _srt_times(text: str) -> list[tuple[float, float]]:
    def sec(t):
        h, m, s = t.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return [(sec(a), sec(b)) for a, b in re.findall(r"(\d\d:\d\d:\d\d[,.]\d{3}) --> (\d\d:\d\d:\d\d[,.]\d{3})", text)]


# ------------------------------------------------------------------------------------------ the views
def test_transcribe_view(browser, live, fixture_path, shots):
    long_clip = fixture_path / "audio" / "long_24k.wav"  # over 60 s: the server cuts it into pieces
    seconds = sf.info(str(long_clip)).duration
    _open(browser, live)
    assert _id(browser, "model-name").text == "mimo-audio"
    info = _upload(browser, "transcribe-clip", long_clip)
    assert f"{seconds:.1f} s" in info and "24 kHz" in info  # duration and the file's own rate
    assert _ink(browser, "transcribe-clip-wave") > 0.5
    _options(browser, seed=1)
    _run(browser, "transcribe")  # streamed
    text = _id(browser, "transcribe-text").get_attribute("value")
    assert text.strip(), "no transcript shown"
    srt, vtt = browser.execute_script("return [subtitles('srt'), subtitles('vtt')]")
    times = _srt_times(srt)
    assert len(times) >= 2 and times[0][0] == 0 and times[-1][1] == pytest.approx(seconds, abs=1e-3)
    assert all(a < b for a, b in times) and all(times[i][1] == times[i + 1][0] for i in range(len(times) - 1))
    assert vtt.startswith("WEBVTT\n\n") and _srt_times(vtt) == times
    assert _id(browser, "transcribe-srt").is_enabled() and _id(browser, "transcribe-vtt").is_enabled()
    _id(browser, "transcribe-copy").click()
    _wait(lambda: "Copied" in _id(browser, "transcribe-note").text, what="the copy message")
    # the same request not streamed (verbose_json) shows the same text and segments
    _options(browser, seed=1, stream=False)
    _run(browser, "transcribe")
    assert _id(browser, "transcribe-text").get_attribute("value") == text
    assert _srt_times(browser.execute_script("return subtitles('srt')")) == times
    _shot(browser, shots, "transcribe")


def test_speak_view(browser, live, mimo, clips, shots):
    text = "Hello from the browser test."
    seed, want = _speaking_seed(mimo, "speak", text=text)
    _open(browser, live, "speak")
    assert _id(browser, "view-speak").is_displayed() and not _id(browser, "view-transcribe").is_displayed()
    _id(browser, "speak-text").send_keys(text)
    _options(browser, seed=seed)
    status = _run(browser, "speak")  # streamed pcm, played through WebAudio and assembled into a wav
    assert "first audio after" in status
    assert _duration(browser, "speak-out-audio") == pytest.approx(want, abs=2e-3)
    info = _id(browser, "speak-out-info").text
    assert f"{want:.2f} s" in info and "24 kHz" in info and "first audio after" in info
    assert _id(browser, "speak-out-download").is_displayed()
    assert _id(browser, "speak-out-download").get_attribute("href").startswith("blob:")
    assert _ink(browser, "speak-out-wave") > 0.3
    _shot(browser, shots, "speak")

    _options(browser, seed=seed, stream=False)  # the server's wav as is
    _run(browser, "speak")
    assert _duration(browser, "speak-out-audio") == pytest.approx(want, abs=2e-3)

    # an example style fills the instruction; the request is the pipeline's instruct TTS. The random model may
    # think and stop before it speaks: then the page says so, as the pipeline's own run of the request shows.
    chip = browser.find_elements("css selector", ".chip")[0]
    chip.click()
    instruct = _id(browser, "speak-instructions").get_attribute("value")
    assert instruct == chip.get_attribute("data-instruct") and chip.get_attribute("aria-pressed") == "true"
    _speak_like_pipeline(browser, mimo, seed, text=text, instruct=instruct)

    # natural description (inside the text), in the voice of a clip
    _id(browser, "speak-mode-natural").click()
    assert not _id(browser, "speak-instructions").is_displayed()
    chip.click()
    natural = _id(browser, "speak-text").get_attribute("value")
    assert natural == f"{chip.get_attribute('data-natural')} {text}"
    browser.find_element("css selector", "#view-speak details.voice summary").click()
    _upload(browser, "speak-voice", clips[0])
    voice, rate = sf.read(str(clips[0]), dtype="float32")
    _speak_like_pipeline(browser, mimo, seed, text=natural, natural=True, voice=(voice, rate))


def _speak_like_pipeline(browser, mimo, seed, **kwargs):
    reply = mimo.run([mimo.prepare("speak", seed=seed, max_new_tokens=TOKENS, **kwargs)], decode="stream")[0]
    seconds = reply.audio.numel() / reply.sample_rate if reply.audio is not None else 0.0
    _options(browser, seed=seed)
    if seconds:
        _run(browser, "speak")
        assert _duration(browser, "speak-out-audio") == pytest.approx(seconds, abs=2e-3)
    else:
        # the server answers a speech request that made no audio with a 422 no_audio; the page shows its message
        _run(browser, "speak", expect="The model produced no audio")
        assert not _id(browser, "speak-out-download").is_displayed()


def test_ask_view(browser, live, clips, shots):
    _open(browser, live, "ask")
    _upload(browser, "ask-clip-0", clips[0])
    _id(browser, "ask-add").click()
    _upload(browser, "ask-clip-1", clips[1])
    question = "What is said in these clips?"
    _id(browser, "ask-question").send_keys(question)
    _id(browser, "ask-thinking").click()
    _options(browser, seed=3, tokens=24)
    _run(browser, "ask")
    details = _id(browser, "ask-reasoning")
    assert details.is_displayed() and details.get_attribute("open") is None  # folded until opened
    # what the page shows is the server's own reply to the same request (the page streams, this one does not)
    messages = []
    for i, path in enumerate(clips[:2]):
        import base64
        part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                       "format": "wav"}}
        messages.append({"role": "user", "content": [part] + ([{"type": "text", "text": question}] if i else [])})
    reply = httpx.post(live.url + "/v1/chat/completions", timeout=60, json={
        "model": "mimo-audio", "messages": messages, "thinking": True, "seed": 3, "max_new_tokens": 24,
    }).json()["choices"][0]["message"]
    details.find_element("css selector", "summary").click()
    shown_reasoning = _id(browser, "ask-reasoning-text").text
    assert shown_reasoning == (reply.get("reasoning_content") or "(no reasoning written)").strip()
    answer = _id(browser, "ask-answer").text
    assert answer == (reply["content"] or "").strip() or (not reply["content"] and answer.startswith("(no answer"))
    _shot(browser, shots, "ask")
    # a clip can be removed again
    _id(browser, "ask-clip-1-remove").click()
    assert len(browser.find_elements("css selector", "#ask-clips .clip-input")) == 1


def test_conversation_view_with_microphone(browser, live, mimo, clips, shots):
    audio, rate = sf.read(str(clips[0]), dtype="float32")
    seed, want = _speaking_seed(mimo, "chat", messages=[{"role": "user", "audio": (audio, rate)}], reply="speech")
    _open(browser, live, "talk")
    _options(browser, seed=seed)
    _upload(browser, "talk-clip", clips[0])
    _run(browser, "talk", "talk-send")
    turns = browser.find_elements("css selector", "#talk-log .turn")
    assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"]
    assert _duration(browser, "turn-1-out-audio") == pytest.approx(want, abs=2e-3)
    assert "first audio after" in _id(browser, "turn-1-out-info").text
    assert _duration(browser, "turn-0-out-audio") == pytest.approx(audio.shape[0] / rate, abs=2e-3)
    assert _id(browser, "turn-1-out-download").is_displayed()

    # the second turn from the microphone (Chromium's fake device): record ~1 s, stop, send
    _id(browser, "talk-clip-record").click()
    _wait(lambda: _id(browser, "talk-clip-record").get_attribute("aria-pressed") == "true", what="recording")
    time.sleep(1.2)
    _id(browser, "talk-clip-record").click()
    info = _wait(lambda: (t := _id(browser, "talk-clip-info").text).startswith("recording ·") and t,
                 what="the recording")
    recorded = float(re.search(r"· ([\d.]+) s", info).group(1))
    assert 0.8 < recorded < 3 and "24 kHz" in info and "converted to wav" in info
    assert _ink(browser, "talk-clip-wave") > 0.03  # the fake device sends a short beep each second
    _run(browser, "talk", "talk-send")
    assert len(browser.find_elements("css selector", "#talk-log .turn")) == 4
    assert _duration(browser, "turn-2-out-audio") == pytest.approx(recorded, abs=0.02)
    assert browser.execute_script("return state.history.length") == 4
    assert browser.execute_script("return state.history[1].audio.id").startswith("audio_")
    _shot(browser, shots, "conversation")
    _id(browser, "talk-reset").click()
    assert not browser.find_elements("css selector", "#talk-log .turn")
    assert browser.execute_script("return state.history.length") == 0


# ------------------------------------------------------------------------------------------ errors, stop, key
@pytest.fixture(scope="module")
def slow():
    backend = FakeBackend(step_s=0.4)  # 8 steps: a request runs ~3 s
    settings = ServerSettings(max_upload_bytes=200_000, queue_size=1, retry_after_s=3, max_new_tokens=8)
    with LiveServer(create_app(backend, settings)) as srv:
        srv.backend = backend
        yield srv


def test_errors_413_429_and_stop(browser, slow, fixture_path, clips, shots, tmp_path):
    _open(browser, slow)
    # a 400 naming a field goes beside that field: a voice clip too short for the server
    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes(0.05, 24000))
    _id(browser, "tab-speak").click()
    _id(browser, "speak-text").send_keys("Hello")
    browser.find_element("css selector", "#view-speak details.voice summary").click()
    _upload(browser, "speak-voice", short)
    _run(browser, "speak", expect="Not done")
    assert "at least 0.1 s" in _id(browser, "speak-voice-error").text
    _id(browser, "speak-voice-clear").click()
    assert not state_clip(browser, "speak-voice")
    _id(browser, "tab-transcribe").click()

    big = fixture_path / "audio" / "long_24k.wav"
    assert big.stat().st_size > 200_000
    _upload(browser, "transcribe-clip", big)
    _run(browser, "transcribe", expect="Not done")
    err = _id(browser, "transcribe-clip-error").text
    assert err.startswith("Too long for this server:") and "MB limit" in err  # beside the clip it concerns
    assert _id(browser, "transcribe-clip-file").get_attribute("aria-invalid") is not None

    # 429: one request runs, another holds the one queue slot; the page's request is refused with the retry time
    busy = [threading.Thread(target=httpx.post, args=(slow.url + "/v1/audio/speech",),
                             kwargs={"json": {"model": "mimo-audio", "input": "hold"}, "timeout": 30})
            for _ in range(2)]
    batches = len(slow.backend.batches)
    slow.backend.gate = gate = threading.Event()  # the running request holds until the page has been refused
    busy[0].start()  # it leaves the queue when its batch starts ...
    _wait(lambda: len(slow.backend.batches) > batches, what="the first request to run")
    busy[1].start()  # ... and the second waits in the queue's one slot
    _wait(lambda: _queue_depth(slow) == 1, what="the queue to fill")
    _id(browser, "tab-speak").click()
    _run(browser, "speak", expect="The server is busy")
    assert "retry in 3 s" in _id(browser, "speak-status").text
    _shot(browser, shots, "errors")
    slow.backend.gate = None
    gate.set()
    for t in busy:
        t.join()

    # Stop aborts the streamed reply; the server cancels the row of a client that left
    cancelled = len(slow.backend.cancelled)
    _id(browser, "speak-run").click()
    _wait(lambda: "of audio, first after" in _id(browser, "speak-status").text, what="progress with the first audio")
    _id(browser, "speak-stop").click()
    _wait(lambda: _id(browser, "speak-status").text.startswith("Stopped"), what="the stop")
    _wait(lambda: len(slow.backend.cancelled) > cancelled, timeout=5, what="the server to cancel the row")
    assert _id(browser, "speak-run").is_enabled() and not _id(browser, "speak-stop").is_enabled()


def state_clip(driver, clip_id):
    return driver.execute_script("return !!state.clips[arguments[0]]", clip_id)


def _queue_depth(srv) -> float:
    text = httpx.get(srv.url + "/metrics").text
    return float(re.search(r"^mimo_audio_queue_depth (\S+)$", text, re.M).group(1))


def test_api_key_needed(browser, clips):
    with LiveServer(create_app(FakeBackend(), ServerSettings(api_key="s3cret"))) as srv:
        browser.get(srv.url + "/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(srv.url + "/")
        _wait(lambda: "API key" in _id(browser, "api-key-error").text, what="the key message")
        assert _id(browser, "ready-state").text == "key needed"
        _upload(browser, "transcribe-clip", clips[0])
        _run(browser, "transcribe", expect="Not done")
        assert _id(browser, "api-key-error").text.startswith("An API key is needed")
        assert browser.switch_to.active_element == _id(browser, "api-key")
        _id(browser, "api-key").send_keys("s3cret\t")  # change event: the page loads the model with the key
        _wait(lambda: _id(browser, "model-name").text == "mimo-audio", what="the model name")
        _wait(lambda: _id(browser, "ready-state").text == "ready", what="ready")
        assert not _id(browser, "api-key-error").text
        _run(browser, "transcribe")
        assert _id(browser, "transcribe-text").get_attribute("value").startswith("w0")


class GatedBackend(FakeBackend):
    """A fake whose start-up warm-up generation waits for ``gate``: /ready answers 503 until it is set."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def stream(self, requests):
        self.gate.wait(30)
        return super().stream(requests)


def test_readiness_shown_while_loading(browser):
    backend = GatedBackend()
    with LiveServer(create_app(backend, ServerSettings(warmup=True, retry_after_s=1))) as srv:
        browser.get(srv.url + "/")
        state = _wait(lambda: (t := _id(browser, "ready-state").text).startswith("loading") and t, what="loading")
        assert "checking again in 1 s" in state
        backend.gate.set()
        _wait(lambda: _id(browser, "ready-state").text == "ready", timeout=10, what="ready after the warm-up")


def test_microphone_denied(browser, live):
    _open(browser, live)
    browser.execute_script("""navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));""")
    _id(browser, "transcribe-clip-record").click()
    msg = _wait(lambda: _id(browser, "transcribe-clip-error").text, what="the message")
    assert msg.startswith("Microphone permission was denied") and "choose a file" in msg
    assert _id(browser, "transcribe-clip-record").get_attribute("aria-pressed") == "false"


# ------------------------------------------------------------------------------------------ access, layout
def test_page_is_self_contained():
    """No CDN, no external fonts or scripts: the page and its files name no other host (it works offline)."""
    app = create_app(FakeBackend(), ServerSettings())
    with LiveServer(app) as srv:
        for path in ("/", "/static/app.js", "/static/style.css"):
            text = httpx.get(srv.url + path).text
            assert len(text) > 1000
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{path} names another host"


INTERACTIVE = "button, input, select, textarea, a[href], audio[src], canvas, summary, [role=tab]"


def test_keyboard_and_accessible_names(browser, live):
    from selenium.webdriver.common.keys import Keys

    _open(browser, live)
    assert browser.execute_script(  # everything the page loaded came from this server
        "return performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))")
    tab = _id(browser, "tab-transcribe")
    tab.click()
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert _id(browser, "tab-speak").get_attribute("aria-selected") == "true"
    assert browser.switch_to.active_element == _id(browser, "tab-speak") and _id(browser, "view-speak").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.END)
    assert _id(browser, "view-talk").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.HOME)
    assert _id(browser, "view-transcribe").is_displayed()
    # Ctrl+Enter runs the open view: without a clip the page says what is missing, beside the clip
    browser.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
    msg = _wait(lambda: _id(browser, "transcribe-clip-error").text, what="the missing-clip message")
    assert msg.startswith("Record or choose the audio to transcribe")
    # Enter on a focused summary opens it
    browser.find_element("css selector", "#options summary").send_keys(Keys.ENTER)
    assert _id(browser, "options").get_attribute("open") is not None
    for tab_id in ("tab-transcribe", "tab-speak", "tab-ask", "tab-talk"):
        _id(browser, tab_id).click()
        for summary in browser.find_elements("css selector", ".view:not(.hidden) details summary"):
            if summary.is_displayed() and summary.find_element("xpath", "..").get_attribute("open") is None:
                summary.click()
        shown = [e for e in browser.find_elements("css selector", INTERACTIVE) if e.is_displayed()]
        unnamed = [f"{e.tag_name}#{e.get_attribute('id')}" for e in shown if not e.accessible_name.strip()]
        assert len(shown) >= 12 and not unnamed, f"{tab_id}: controls without an accessible name: {unnamed}"


def test_phone_width_layout(browser, live, clips, shots):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        _open(browser, live)
        _upload(browser, "transcribe-clip", clips[0])
        for tab_id in ("tab-transcribe", "tab-speak", "tab-ask", "tab-talk"):
            _id(browser, tab_id).click()
            over = browser.execute_script("""
                const w = document.documentElement.clientWidth, out = [];
                if (document.documentElement.scrollWidth > w) out.push('page scrolls sideways: ' +
                    document.documentElement.scrollWidth + ' > ' + w);
                for (const e of document.querySelectorAll('button, input, select, textarea, canvas, audio, label')) {
                  const r = e.getBoundingClientRect();
                  if (r.width && (r.right > w + 0.5 || r.left < -0.5)) out.push((e.id || e.tagName) + ' ' + r.left + '..' + r.right);
                }
                return out;""")
            assert not over, f"{tab_id} at 390 px: {over}"
            assert _id(browser, tab_id).size["height"] >= 32  # big enough to tap
        _id(browser, "tab-transcribe").click()
        _shot(browser, shots, "phone")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_views_follow_the_served_tasks(browser):
    """A view is shown only for a task /v1/models lists (the few-shot and continuation tasks have no endpoint)."""
    app = create_app(FakeBackend(), ServerSettings())

    @app.middleware("http")
    async def fewer_tasks(request, call_next):  # a server that offers transcription only
        response = await call_next(request)
        if request.url.path == "/v1/models":
            import json

            body = b"".join([chunk async for chunk in response.body_iterator])
            data = json.loads(body)
            data["data"][0]["tasks"] = ["transcribe"]
            from starlette.responses import JSONResponse

            return JSONResponse(data)
        return response

    with LiveServer(app) as srv:
        _open(browser, srv)
        _wait(lambda: not _id(browser, "tab-speak").is_displayed(), what="the speak tab to hide")
        assert _id(browser, "tab-transcribe").is_displayed()
        assert not _id(browser, "tab-ask").is_displayed() and not _id(browser, "tab-talk").is_displayed()
