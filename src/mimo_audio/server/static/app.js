// MiMo-Audio web page: one view per task the server offers (GET /v1/models -> tasks), talking to this server's
// OpenAI-compatible API. Plain script, no build step, no network beyond this server.
//
// Audio in: a file or a microphone recording (MediaRecorder, converted to 24 kHz mono wav with WebAudio); files the
// server decodes itself (wav, flac, ogg, mp3) are sent as they are. Audio out: streamed pcm16 deltas are played as
// they arrive (scheduled into WebAudio) and drawn on a canvas; the whole reply becomes a wav to play and download.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 24000; // MiMo's output rate; pcm deltas are 16-bit little-endian mono at this rate
const state = { model: "mimo-audio", tasks: null, limits: {}, readyTimer: null, history: [], clips: {}, running: {} };

// ================================================================== small helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function fmtSeconds(s) { return `${s.toFixed(s < 10 ? 2 : 1)} s`; }
function fmtRate(r) { return r ? `${(r / 1000).toFixed(r % 1000 ? 2 : 0)} kHz` : "rate unknown"; }
function fmtBytes(n) { return n < 1024 * 1024 ? `${Math.max(1, Math.round(n / 1024))} kB` : `${(n / 1048576).toFixed(1)} MB`; }

function authHeaders(json) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

let sharedCtx = null;
function audioCtx() { // one context at MiMo's rate for decoding (resamples to 24 kHz) and playback
  if (!sharedCtx) sharedCtx = new (window.AudioContext || window.webkitAudioContext)({ sampleRate: RATE });
  if (sharedCtx.state === "suspended") sharedCtx.resume();
  return sharedCtx;
}

function encodeWav(samples, rate) {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE"); str(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true);
  v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data");
  v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buf], { type: "audio/wav" });
}

function pcm16ToFloat(bytes) {
  const n = Math.floor(bytes.length / 2);
  const out = new Float32Array(n);
  const v = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
  for (let i = 0; i < n; i++) out[i] = v.getInt16(i * 2, true) / 32768;
  return out;
}

function b64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function blobToBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

// The container of a file from its first bytes, and its own sample rate and channels where the header says.
function sniff(bytes) {
  const tag = (o, s) => s.split("").every((c, i) => bytes[o + i] === c.charCodeAt(0));
  if (tag(0, "RIFF") && tag(8, "WAVE")) {
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    for (let o = 12; o + 8 <= bytes.length;) {
      const size = v.getUint32(o + 4, true);
      if (tag(o, "fmt ") && o + 16 <= bytes.length) return { kind: "wav", rate: v.getUint32(o + 12, true), channels: v.getUint16(o + 10, true) };
      o += 8 + size + (size % 2);
    }
    return { kind: "wav" };
  }
  if (tag(0, "fLaC") && bytes.length > 21) {
    return { kind: "flac", rate: (bytes[18] << 12) | (bytes[19] << 4) | (bytes[20] >> 4), channels: ((bytes[20] >> 1) & 7) + 1 };
  }
  if (tag(0, "OggS")) return { kind: "ogg" };
  // an MPEG audio frame sync with a layer set (ADTS AAC has the same sync but layer 00: the server cannot read it)
  if (tag(0, "ID3") || (bytes[0] === 0xff && (bytes[1] & 0xe0) === 0xe0 && (bytes[1] & 0x06) !== 0)) return { kind: "mp3" };
  return { kind: "other" };
}

// Min/max per pixel column of the samples, drawn on a canvas sized to its box; `progress` (0..1) shades the part played.
function drawWave(canvas, samples, progress) {
  canvas.redraw = () => drawWave(canvas, samples, progress); // again when its box changes (tab shown, resize)
  if (!canvas.clientWidth) return;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(canvas).getPropertyValue("--wave-bg") || "#f3f4f6";
  g.fillRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(canvas).color || "#e8590c";
  const n = samples ? samples.length : 0;
  const mid = h / 2;
  g.fillRect(0, mid, w, Math.max(1, dpr / 2));
  if (!n) return;
  let peak = 0.05; // scaled to the clip's peak (quiet clips stay visible), never more than 20x
  for (let i = 0; i < n; i++) { const a = Math.abs(samples[i]); if (a > peak) peak = a; }
  const k = mid / peak;
  const per = n / w;
  for (let x = 0; x < w; x++) {
    const a = Math.floor(x * per), b = Math.min(n, Math.max(a + 1, Math.floor((x + 1) * per)));
    let lo = 1, hi = -1;
    for (let i = a; i < b; i++) { const s = samples[i]; if (s < lo) lo = s; if (s > hi) hi = s; }
    if (hi < lo) continue;
    g.fillRect(x, mid - hi * k, 1, Math.max(1, (hi - lo) * k));
  }
  if (progress > 0) {
    g.fillStyle = "rgba(29,35,48,.12)";
    g.fillRect(0, 0, Math.min(1, progress) * w, h);
  }
}

function concat(parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const all = new Float32Array(n);
  let o = 0;
  for (const p of parts) { all.set(p, o); o += p.length; }
  return all;
}

// ================================================================== errors
class ApiError extends Error {
  constructor(status, message, { param = null, code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status; this.param = param; this.code = code; this.retryAfter = retryAfter;
  }
}

async function apiError(resp) {
  let message = `The server answered HTTP ${resp.status}`, param = null, code = null;
  try {
    const body = await resp.json();
    if (body && body.error) ({ message, param, code } = body.error);
  } catch (e) { /* not JSON */ }
  const retry = parseInt(resp.headers.get("Retry-After") || "", 10);
  return new ApiError(resp.status, message, { param, code, retryAfter: Number.isFinite(retry) ? retry : null });
}

async function post(path, body, signal) {
  const json = !(body instanceof FormData);
  let resp;
  try {
    resp = await fetch(path, { method: "POST", headers: authHeaders(json), body: json ? JSON.stringify(body) : body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "The server cannot be reached (is it still running?).");
  }
  if (!resp.ok) throw await apiError(resp);
  return resp;
}

// The words a person reads for an error, by status; the server's own message follows where it helps.
function plainWords(err) {
  const retry = err.retryAfter != null ? `${err.retryAfter} s` : "a few seconds";
  switch (err.status) {
    case 401: return "An API key is needed (or the one given is wrong): enter it at the top of the page.";
    case 413: return `Too long for this server: ${err.message}`;
    case 429: return `The server is busy (its queue is full): retry in ${retry}.`;
    case 503: return `The model is not ready yet (still loading): retry in ${retry}.`;
    case 504: return `The request took longer than the server allows: ${err.message}`;
    default: return err.message;
  }
}

function setFieldError(id, text) {
  const e = $(id);
  if (!e) return false;
  e.textContent = text || "";
  const target = document.querySelector(`[aria-describedby~="${id}"]`);
  if (target) target.toggleAttribute("aria-invalid", !!text);
  return true;
}

function clearErrors(view) {
  for (const e of document.querySelectorAll(`#view-${view} .field-error, #options-error, #api-key-error`)) e.textContent = "";
  for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

// Shows the error beside the field it concerns (by the server's `param`, or by status), else in the view's status.
function showError(view, err, fieldFor) {
  const text = plainWords(err);
  let field = null;
  if (err.status === 401) field = "api-key-error";
  else if (err.param && /^(max_new_tokens|max_tokens|max_completion_tokens|seed|temperature|top_p|top_k)$/.test(err.param)) field = "options-error";
  else field = fieldFor(err);
  if (field && setFieldError(field, text)) {
    if (field === "api-key-error") $("api-key").focus();
    if (field === "options-error") $("options").open = true;
    setStatus(view, `Not done: ${field === "options-error" ? "see Options below" : "see the message by the field it concerns"}.`, true);
  } else {
    setStatus(view, text, true);
  }
  if (err.status === 503) pollReady();
}

function setStatus(view, text, isError) {
  const s = $(`${view}-status`);
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

// ================================================================== clip inputs (file or microphone)
// Each .clip-input box gets: Record (toggles), a file chooser, a waveform, the clip's details, a player, an error.
// state.clips[id] = { blob (what is sent), name, seconds, rate } once a clip is there.
function makeClipInput(box, removable) {
  const id = box.id, label = box.dataset.label || "Audio";
  const rec = el("button", { type: "button", id: `${id}-record`, class: "record", "aria-pressed": "false", text: "● Record" });
  const file = el("input", { type: "file", id: `${id}-file`, accept: "audio/*,.wav,.flac,.ogg,.opus,.mp3,.webm,.m4a",
                             "aria-describedby": `${id}-error` });
  const fileLabel = el("label", { for: `${id}-file`, class: "file-label", text: "Choose a file" });
  const canvas = el("canvas", { id: `${id}-wave`, class: "wave", role: "img", "aria-label": `${label}: no clip yet` });
  const info = el("span", { id: `${id}-info`, class: "muted info" });
  const player = el("audio", { id: `${id}-audio`, controls: true, class: "hidden", "aria-label": `Play ${label.toLowerCase()}` });
  const error = el("p", { id: `${id}-error`, class: "field-error", role: "alert" });
  const legend = el("legend", { text: label + (box.dataset.optional ? " (optional)" : "") });
  const row = el("div", { class: "row" }, rec, el("span", { class: "muted", text: "or" }), fileLabel, file);
  if (removable) row.append(el("button", { type: "button", id: `${id}-remove`, class: "remove", text: "Remove",
                                           "aria-label": `Remove ${label.toLowerCase()}`, onclick: () => removable(box) }));
  if (box.dataset.optional) row.append(el("button", { type: "button", id: `${id}-clear`, text: "Clear",
                                                      "aria-label": `Clear ${label.toLowerCase()}`, onclick: () => clearClip(id) }));
  const fs = el("fieldset", { class: "clip" }, legend, row, canvas, el("div", { class: "row" }, player, info), error);
  box.replaceChildren(fs);
  file.addEventListener("change", async () => {
    const f = file.files[0];
    if (f) await loadClip(id, f, f.name);
  });
  rec.addEventListener("click", () => toggleRecording(id));
}

function clearClip(id) {
  delete state.clips[id];
  $(`${id}-info`).textContent = "";
  $(`${id}-audio`).classList.add("hidden");
  $(`${id}-audio`).removeAttribute("src");
  $(`${id}-file`).value = "";
  drawWave($(`${id}-wave`), null);
  $(`${id}-wave`).setAttribute("aria-label", `${$(id).dataset.label}: no clip yet`);
}

async function loadClip(id, blob, name) {
  setFieldError(`${id}-error`, "");
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const head = sniff(bytes);
  let samples;
  try {
    const decoded = await audioCtx().decodeAudioData(bytes.slice().buffer);
    const mono = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const data = decoded.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
    }
    samples = mono;
  } catch (e) {
    if (head.kind === "other") { setFieldError(`${id}-error`, `This browser cannot read "${name}" as audio; choose a wav, flac, ogg or mp3 file.`); return; }
  }
  let send = blob, rate = head.rate, note = "";
  if (head.kind === "other") { // webm / m4a / recordings: the server does not read these, so send 24 kHz mono wav
    send = encodeWav(samples, RATE);
    rate = RATE;
    note = " · converted to wav";
  }
  const seconds = samples ? samples.length / RATE : 0;
  state.clips[id] = { blob: send, name, seconds, rate, samples };
  const label = $(id).dataset.label;
  const chan = head.channels && head.channels > 1 ? ` · ${head.channels} channels (sent as is)` : "";
  $(`${id}-info`).textContent = `${name} · ${fmtSeconds(seconds)} · ${fmtRate(rate)}${chan} · ${fmtBytes(send.size)}${note}`;
  $(`${id}-wave`).setAttribute("aria-label", `${label}: waveform of ${name}, ${fmtSeconds(seconds)}`);
  const player = $(`${id}-audio`);
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(send);
  player.classList.remove("hidden");
  drawWave($(`${id}-wave`), samples);
}

const recorders = {};
async function toggleRecording(id) {
  const btn = $(`${id}-record`);
  const r = recorders[id];
  if (r) { r.rec.stop(); return; }
  setFieldError(`${id}-error`, "");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setFieldError(`${id}-error`, "This browser gives no microphone here (pages need https or localhost to record). Choose a file instead.");
    return;
  }
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    const denied = e && (e.name === "NotAllowedError" || e.name === "SecurityError");
    setFieldError(`${id}-error`, denied
      ? "Microphone permission was denied. Allow the microphone for this site in the browser's address bar, or choose a file instead."
      : `No microphone could be opened (${(e && e.name) || e}). Check that one is connected, or choose a file instead.`);
    return;
  }
  const chunks = [];
  const rec = new MediaRecorder(media);
  const t0 = performance.now();
  const tick = setInterval(() => { $(`${id}-info`).textContent = `recording… ${fmtSeconds((performance.now() - t0) / 1000)}`; }, 100);
  recorders[id] = { rec };
  rec.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  rec.onstop = async () => {
    clearInterval(tick);
    media.getTracks().forEach((t) => t.stop());
    delete recorders[id];
    btn.textContent = "● Record"; btn.setAttribute("aria-pressed", "false"); btn.classList.remove("on");
    await loadClip(id, new Blob(chunks, { type: rec.mimeType }), "recording");
  };
  rec.start(250);
  btn.textContent = "■ Stop recording"; btn.setAttribute("aria-pressed", "true"); btn.classList.add("on");
}

function needClip(id, what) {
  const c = state.clips[id];
  if (!c) throw new ApiError(-1, `Record or choose ${what} first.`, { param: `@${id}` });
  return c;
}

// ================================================================== clip outputs (playback, waveform, download)
function makeOutput(box) {
  const id = box.id, label = box.dataset.label || "Audio";
  const canvas = el("canvas", { id: `${id}-wave`, class: "wave", role: "img", "aria-label": `${label}: nothing yet` });
  const player = el("audio", { id: `${id}-audio`, controls: true, class: "hidden", "aria-label": `Play ${label.toLowerCase()}` });
  const dl = el("a", { id: `${id}-download`, class: "button hidden", download: "mimo-audio.wav", text: "Download wav" });
  const info = el("span", { id: `${id}-info`, class: "muted info" });
  box.replaceChildren(el("div", { class: "output" }, canvas, el("div", { class: "row" }, player, dl, info)));
  return new OutputView(id, label);
}

class OutputView {
  constructor(id, label) { this.id = id; this.label = label; this.url = null; this.reset(); }
  show() { $(this.id).classList.remove("hidden"); }
  reset() {
    this.parts = []; this.samples = 0; this.firstAudio = null; this.sources = []; this.t = 0;
    $(this.id).classList.add("hidden"); // shown with the first audio
    $(`${this.id}-audio`).classList.add("hidden");
    $(`${this.id}-download`).classList.add("hidden");
    $(`${this.id}-info`).textContent = "";
    drawWave($(`${this.id}-wave`), null);
  }
  // A streamed pcm chunk: play it right after the previous one, draw everything so far.
  push(samples, t0) {
    if (!samples.length) return;
    if (this.firstAudio == null) { this.firstAudio = (performance.now() - t0) / 1000; this.show(); }
    this.parts.push(samples);
    this.samples += samples.length;
    const ctx = audioCtx();
    const buffer = ctx.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    this.t = Math.max(this.t, ctx.currentTime + 0.05);
    src.start(this.t);
    this.t += buffer.duration;
    this.sources.push(src);
    if (!this.drawPending) {
      this.drawPending = true;
      requestAnimationFrame(() => { this.drawPending = false; drawWave($(`${this.id}-wave`), concat(this.parts)); });
    }
  }
  silence() { for (const s of this.sources) { try { s.stop(); } catch (e) { /* not started */ } } this.sources = []; }
  seconds() { return this.samples / RATE; }
  // The whole reply: a wav Blob (from the streamed parts when blob is not given).
  async finish(blob, rate) {
    let samples;
    if (!blob) {
      samples = concat(this.parts);
      blob = encodeWav(samples, RATE);
      rate = RATE;
    } else {
      const head = sniff(new Uint8Array(await blob.slice(0, 4096).arrayBuffer()));
      rate = rate || head.rate;
      try {
        const decoded = await audioCtx().decodeAudioData(await blob.arrayBuffer());
        samples = decoded.getChannelData(0);
      } catch (e) { samples = new Float32Array(0); }
      this.parts = [samples]; this.samples = samples.length;
    }
    this.show();
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = URL.createObjectURL(blob);
    const player = $(`${this.id}-audio`), dl = $(`${this.id}-download`);
    player.src = this.url; player.classList.remove("hidden");
    dl.href = this.url; dl.classList.remove("hidden");
    dl.setAttribute("aria-label", `Download ${this.label.toLowerCase()} (wav)`);
    const secs = samples.length / RATE;
    const first = this.firstAudio != null ? ` · first audio after ${fmtSeconds(this.firstAudio)}` : "";
    $(`${this.id}-info`).textContent = `${fmtSeconds(secs)} · ${fmtRate(rate)}${first}`;
    $(`${this.id}-wave`).setAttribute("aria-label", `${this.label}: waveform, ${fmtSeconds(secs)}`);
    drawWave($(`${this.id}-wave`), samples);
    player.ontimeupdate = () => drawWave($(`${this.id}-wave`), samples, player.duration ? player.currentTime / player.duration : 0);
    return { blob, seconds: secs };
  }
}

// ================================================================== streaming
// Reads a fetch() response body as server-sent events; calls onEvent(parsedJson) for each data line.
async function readSSE(resp, onEvent) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const ev = JSON.parse(data);
        if (ev.error || ev.type === "error") {
          const e = ev.error || {};
          throw new ApiError(e.code === "timeout" ? 504 : 500, e.message || "The server stopped the reply", { param: e.param, code: e.code });
        }
        onEvent(ev);
      }
    }
  }
}

class PcmDecoder { // keeps 16-bit samples aligned across chunks
  constructor() { this.left = new Uint8Array(0); }
  feed(bytes) {
    if (this.left.length) { const m = new Uint8Array(this.left.length + bytes.length); m.set(this.left); m.set(bytes, this.left.length); bytes = m; }
    const even = bytes.length - (bytes.length % 2);
    this.left = bytes.slice(even);
    return pcm16ToFloat(bytes.subarray(0, even));
  }
}

function options() {
  const out = {};
  const mnt = parseInt($("max-new-tokens").value, 10);
  if (mnt > 0) out.max_new_tokens = mnt;
  const seed = parseInt($("seed").value, 10);
  if (seed >= 0) out.seed = seed;
  return out;
}
const streaming = () => $("stream").checked;

// Runs one request of a view: busy state, Stop (aborts the fetch; the server cancels a request whose client
// left), a progress line with elapsed time, and errors shown where they belong.
async function runView(view, work, fieldFor, progressText) {
  if (state.running[view]) return;
  clearErrors(view);
  const ctl = new AbortController();
  const t0 = performance.now();
  const run = state.running[view] = { ctl, t0, stopped: false };
  const runBtn = document.querySelector(`#view-${view} .primary`);
  runBtn.disabled = true; $(`${view}-stop`).disabled = false;
  $(`${view}-progress`).classList.remove("hidden");
  const tick = () => setStatus(view, `Working… ${fmtSeconds((performance.now() - t0) / 1000)}${progressText ? progressText() : ""}`);
  tick();
  const timer = setInterval(tick, 100);
  try {
    const summary = await work(ctl.signal, t0);
    setStatus(view, `Done in ${fmtSeconds((performance.now() - t0) / 1000)}${summary ? " · " + summary : ""}.`);
  } catch (e) {
    if (e.name === "AbortError" || run.stopped) setStatus(view, "Stopped. The server cancelled the request.");
    else if (e instanceof ApiError) showError(view, e, fieldFor);
    else { console.error(e); setStatus(view, `Something went wrong in the page: ${e.message || e}`, true); }
  } finally {
    clearInterval(timer);
    delete state.running[view];
    runBtn.disabled = false; $(`${view}-stop`).disabled = true;
    $(`${view}-progress`).classList.add("hidden");
  }
}

function stopView(view) {
  const run = state.running[view];
  if (run) { run.stopped = true; run.ctl.abort(); }
}

// A local problem (no clip yet, empty text) goes beside its field like a server error would.
const localField = (err) => (err.param && err.param.startsWith("@") ? `${err.param.slice(1)}-error` : null);

// ================================================================== transcribe
const transcript = { text: "", segments: null };

function timeStamp(t, sep) {
  const ms = Math.round(t * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(Math.floor(ms / 3600000))}:${p(Math.floor(ms / 60000) % 60)}:${p(Math.floor(ms / 1000) % 60)}${sep}${p(ms % 1000, 3)}`;
}

function subtitles(kind) {
  const segs = transcript.segments || [];
  const cues = segs.map((s, i) => {
    const times = `${timeStamp(s.start, kind === "srt" ? "," : ".")} --> ${timeStamp(s.end, kind === "srt" ? "," : ".")}`;
    return kind === "srt" ? `${i + 1}\n${times}\n${s.text.trim()}\n` : `${times}\n${s.text.trim()}\n`;
  });
  return (kind === "vtt" ? "WEBVTT\n\n" : "") + cues.join("\n");
}

function download(text, name, type) {
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  $("transcribe-note").textContent = `Saved ${name}.`;
}

async function copyTranscript() {
  const text = $("transcribe-text").value;
  let ok = false;
  try { await navigator.clipboard.writeText(text); ok = true; } catch (e) {
    const t = $("transcribe-text"); t.select(); ok = document.execCommand && document.execCommand("copy");
  }
  $("transcribe-note").textContent = ok ? "Copied to the clipboard." : "Copying is blocked here: select the text and copy it by hand.";
}

async function transcribe(signal) {
  const clip = needClip("transcribe-clip", "the audio to transcribe");
  const out = $("transcribe-text");
  out.value = ""; transcript.text = ""; transcript.segments = null;
  for (const b of ["transcribe-copy", "transcribe-srt", "transcribe-vtt"]) $(b).disabled = true;
  $("transcribe-note").textContent = "";
  const form = new FormData();
  form.append("file", clip.blob, clip.blob.type === "audio/wav" ? "audio.wav" : clip.name);
  form.append("model", state.model);
  if ($("transcribe-language").value) form.append("language", $("transcribe-language").value);
  for (const [k, v] of Object.entries(options())) form.append(k, String(v));
  if (streaming()) {
    form.append("stream", "true");
    const resp = await post("/v1/audio/transcriptions", form, signal);
    await readSSE(resp, (ev) => {
      if (ev.type === "transcript.text.delta") { transcript.text += ev.delta; out.value = transcript.text; }
      else if (ev.type === "transcript.text.done") { transcript.text = ev.text; transcript.segments = ev.segments || null; }
    });
  } else {
    form.append("response_format", "verbose_json");
    const body = await (await post("/v1/audio/transcriptions", form, signal)).json();
    transcript.text = body.text; transcript.segments = body.segments;
  }
  out.value = transcript.text;
  $("transcribe-copy").disabled = false;
  $("transcribe-srt").disabled = $("transcribe-vtt").disabled = !transcript.segments;
  const n = transcript.segments ? transcript.segments.length : 0;
  return `${transcript.text.length} characters from ${fmtSeconds(clip.seconds)} of audio${n ? ` in ${n} segment${n > 1 ? "s" : ""}` : ""}`;
}

// ================================================================== speak
let speakOut;
const speakNatural = () => $("speak-mode-natural").checked;

function updateSpeakMode() {
  const natural = speakNatural();
  $("speak-instructions-row").classList.toggle("hidden", natural);
  $("speak-text-label").textContent = natural ? "Description of the voice, then the text to speak" : "Text to speak";
  $("speak-text").placeholder = natural ? "In a cheerful young woman's voice, say: Good morning, everyone!" : "Hello! This is MiMo speaking.";
}

function pickStyle(chip) {
  if (speakNatural()) {
    const t = $("speak-text");
    const words = t.value.replace(/^[^:：]*[:：]\s*/, "") || "Hello! This is MiMo speaking.";
    t.value = `${chip.dataset.natural} ${words}`;
  } else {
    $("speak-instructions").value = chip.dataset.instruct;
  }
  for (const c of document.querySelectorAll(".chip")) c.setAttribute("aria-pressed", c === chip ? "true" : "false");
}

async function speak(signal, t0) {
  const text = $("speak-text").value.trim();
  if (!text) throw new ApiError(-1, speakNatural() ? "Describe the voice and write what it says." : "Type the text to speak.", { param: "@speak-text" });
  const body = { model: state.model, input: text, ...options() };
  if (speakNatural()) body.natural = true;
  else if ($("speak-instructions").value.trim()) body.instructions = $("speak-instructions").value.trim();
  const voice = state.clips["speak-voice"];
  if (voice) body.ref_audio = `data:${voice.blob.type || "audio/wav"};base64,` + await blobToBase64(voice.blob);
  speakOut.reset();
  if (!streaming()) {
    body.response_format = "wav";
    const resp = await post("/v1/audio/speech", body, signal);
    const r = await speakOut.finish(await resp.blob());
    return `${fmtSeconds(r.seconds)} of speech`;
  }
  body.stream_format = "sse"; body.response_format = "pcm";
  const resp = await post("/v1/audio/speech", body, signal);
  const pcm = new PcmDecoder();
  try {
    await readSSE(resp, (ev) => { if (ev.type === "speech.audio.delta") speakOut.push(pcm.feed(b64ToBytes(ev.audio)), t0); });
  } catch (e) { speakOut.silence(); throw e; }
  if (!speakOut.samples) throw new ApiError(500, "The model produced no speech for this text (try another seed or text).");
  const r = await speakOut.finish();
  return `${fmtSeconds(r.seconds)} of speech, first audio after ${fmtSeconds(speakOut.firstAudio)}`;
}

// ================================================================== ask about audio
let askCount = 0;
function addAskClip() {
  const limit = state.limits.max_audio_parts || 8;
  if (document.querySelectorAll("#ask-clips .clip-input").length >= limit) {
    setStatus("ask", `At most ${limit} clips per question on this server.`, true);
    return;
  }
  const id = `ask-clip-${askCount++}`;
  const n = document.querySelectorAll("#ask-clips .clip-input").length + 1;
  const box = el("div", { class: "clip-input", id, "data-label": `Clip ${n}` });
  $("ask-clips").append(box);
  makeClipInput(box, n > 1 ? (b) => { delete state.clips[b.id]; b.remove(); renumberAsk(); } : null);
  if (n > 1) $(`${id}-record`).focus();
}

function renumberAsk() {
  document.querySelectorAll("#ask-clips .clip-input").forEach((b, i) => {
    b.dataset.label = `Clip ${i + 1}`;
    b.querySelector("legend").textContent = `Clip ${i + 1}`;
  });
}

function askClipIds() { return [...document.querySelectorAll("#ask-clips .clip-input")].map((b) => b.id).filter((id) => state.clips[id]); }

async function ask(signal) {
  const ids = askClipIds();
  if (!ids.length) throw new ApiError(-1, "Record or choose at least one clip.", { param: "@" + document.querySelector("#ask-clips .clip-input").id });
  const question = $("ask-question").value.trim();
  if (!question) throw new ApiError(-1, "Write the question about the audio.", { param: "@ask-question" });
  // One clip per user message (the server takes one audio part per message); the question goes with the last.
  const messages = [];
  for (const [i, id] of ids.entries()) {
    const part = { type: "input_audio", input_audio: { data: await blobToBase64(state.clips[id].blob), format: "wav" } };
    messages.push({ role: "user", content: i === ids.length - 1 ? [part, { type: "text", text: question }] : [part] });
  }
  const body = { model: state.model, messages, stream: streaming(), ...options() };
  if ($("ask-thinking").checked) body.thinking = true;
  const answer = $("ask-answer"), reasoning = $("ask-reasoning-text");
  answer.textContent = ""; reasoning.textContent = "";
  $("ask-reasoning").classList.toggle("hidden", !body.thinking);
  state.askIds = ids;
  const resp = await post("/v1/chat/completions", body, signal);
  if (!body.stream) {
    const msg = (await resp.json()).choices[0].message;
    answer.textContent = msg.content || "";
    reasoning.textContent = msg.reasoning_content || "";
  } else {
    await readSSE(resp, (ev) => {
      const d = (ev.choices && ev.choices[0] && ev.choices[0].delta) || {};
      if (d.reasoning_content) reasoning.textContent += d.reasoning_content;
      if (d.content) answer.textContent += d.content;
    });
  }
  if (body.thinking && !reasoning.textContent) reasoning.textContent = "(no reasoning written)";
  if (!answer.textContent) answer.textContent = body.thinking ? "(no answer: the reply ended while thinking; raise max new tokens)" : "(empty answer)";
  return `${ids.length} clip${ids.length > 1 ? "s" : ""}`;
}

function askField(err) {
  const m = /^messages\[(\d+)\]/.exec(err.param || "");
  if (m && state.askIds && state.askIds[+m[1]] && !/content$/.test(err.param)) return `${state.askIds[+m[1]]}-error`;
  if (m) return "ask-question-error";
  if (err.status === 413 && state.askIds) return `${state.askIds[state.askIds.length - 1]}-error`;
  return localField(err);
}

// ================================================================== conversation
let turnCount = 0;
function chatBubble(role, text) {
  const log = $("talk-log");
  const empty = log.querySelector(".empty");
  if (empty) empty.remove();
  const id = `turn-${turnCount++}`;
  const who = role === "user" ? "You" : "MiMo";
  const bubble = el("div", { class: `turn ${role}`, id, role: "group", "aria-label": `${who}, turn ${Math.ceil(turnCount / 2)}` },
    el("strong", { class: "who", text: who }), el("p", { class: "text", id: `${id}-text`, text: text || "" }),
    el("div", { class: "clip-output", id: `${id}-out`, "data-label": `${who}'s audio` }));
  log.append(bubble);
  const out = makeOutput(bubble.querySelector(".clip-output"));
  bubble.scrollIntoView({ block: "end" });
  return { id, out, bubble };
}

async function talk(signal, t0) {
  const clip = needClip("talk-clip", "your turn (a clip)");
  const data = await blobToBase64(clip.blob);
  const user = { role: "user", content: [{ type: "input_audio", input_audio: { data, format: "wav" } }] };
  const messages = [];
  const sys = $("talk-system").value.trim();
  if (sys) messages.push({ role: "system", content: sys });
  messages.push(...state.history, user);
  const wantStream = streaming();
  const body = { model: state.model, messages, modalities: ["text", "audio"], stream: wantStream,
                 audio: { voice: "default", format: wantStream ? "pcm16" : "wav" }, ...options() };
  const voice = state.clips["talk-voice"];
  if (voice) body.ref_audio = `data:${voice.blob.type || "audio/wav"};base64,` + await blobToBase64(voice.blob);
  const resp = await post("/v1/chat/completions", body, signal);
  // the user's turn is shown once the server accepted it
  const mine = chatBubble("user", "");
  const u = await mine.out.finish(clip.blob, clip.rate);
  mine.bubble.querySelector(".text").textContent = `(${fmtSeconds(u.seconds)} of audio)`;
  const reply = chatBubble("assistant", "…");
  const textEl = reply.bubble.querySelector(".text");
  let text = "", audioId = null;
  try {
    if (!wantStream) {
      const msg = (await resp.json()).choices[0].message;
      text = msg.audio.transcript; audioId = msg.audio.id;
      await reply.out.finish(new Blob([b64ToBytes(msg.audio.data)], { type: "audio/wav" }));
    } else {
      const pcm = new PcmDecoder();
      await readSSE(resp, (ev) => {
        const a = ((ev.choices && ev.choices[0] && ev.choices[0].delta) || {}).audio;
        if (!a) return;
        audioId = a.id || audioId;
        if (a.transcript) { text += a.transcript; textEl.textContent = text; }
        if (a.data) reply.out.push(pcm.feed(b64ToBytes(a.data)), t0);
      });
      await reply.out.finish();
    }
  } catch (e) {
    reply.out.silence();
    mine.bubble.remove(); reply.bubble.remove(); // the turn did not happen: the history stays as it was
    throw e;
  }
  textEl.textContent = text || "(no words)";
  state.history.push(user, { role: "assistant", content: text, audio: audioId ? { id: audioId } : undefined });
  clearClip("talk-clip");
  const first = reply.out.firstAudio != null ? `, first audio after ${fmtSeconds(reply.out.firstAudio)}` : "";
  return `turn ${state.history.length / 2}${first}`;
}

function resetTalk() {
  stopView("talk");
  state.history = [];
  $("talk-log").replaceChildren(el("p", { class: "muted empty", text: "New conversation. Record or choose a clip, then press Send." }));
  setStatus("talk", "");
}

function talkField(err) {
  if (err.param === "ref_audio") return "talk-voice-error";
  if (/^messages/.test(err.param || "") || err.status === 413) return "talk-clip-error";
  return localField(err);
}

// ================================================================== tabs
function selectTab(tab, focus) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", on ? "true" : "false");
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).classList.toggle("hidden", !on);
  }
  if (focus) tab.focus();
  history.replaceState(null, "", "#" + tab.id.slice(4));
  for (const c of document.querySelectorAll(`#${tab.getAttribute("aria-controls")} canvas`)) {
    if (c.redraw) c.redraw();
  }
}

function tabKeys(e) { // arrow keys move between tabs, Home/End to the ends (WAI-ARIA tabs pattern)
  const tabs = [...document.querySelectorAll('[role="tab"]:not(.hidden)')];
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  let j = null;
  if (e.key === "ArrowRight") j = (i + 1) % tabs.length;
  else if (e.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
  else if (e.key === "Home") j = 0;
  else if (e.key === "End") j = tabs.length - 1;
  if (j !== null) { e.preventDefault(); selectTab(tabs[j], true); }
}

// ================================================================== server state
async function loadModel() {
  const name = $("model-name");
  try {
    const resp = await fetch("/v1/models", { headers: authHeaders(false) });
    if (resp.status === 401) {
      name.textContent = "(API key needed)";
      setFieldError("api-key-error", "This server needs an API key: enter it here.");
      setReady("key needed", "warn");
      return;
    }
    if (!resp.ok) { name.textContent = plainWords(await apiError(resp)); return; }
    setFieldError("api-key-error", "");
    const card = (await resp.json()).data[0];
    state.model = card.id;
    state.tasks = card.tasks || null;
    state.limits = card.limits || {};
    name.textContent = card.id;
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      tab.classList.toggle("hidden", !!state.tasks && !state.tasks.includes(tab.dataset.task));
    }
    const maxChars = state.limits.max_text_chars;
    if (maxChars) for (const t of document.querySelectorAll("textarea:not([readonly]), input[type=text]")) t.maxLength = maxChars;
    const cap = state.limits.max_new_tokens, mnt = $("max-new-tokens");
    if (cap) { mnt.max = cap; if (+mnt.value > cap) mnt.value = cap; } // the server refuses more than its cap
    pollReady();
  } catch (e) {
    name.textContent = "(server unreachable)";
    setReady("unreachable", "bad");
    setTimeout(loadModel, 5000);
  }
}

function setReady(text, kind) {
  const b = $("ready-state");
  b.textContent = text;
  b.className = `badge ${kind || ""}`;
}

async function pollReady() {
  clearTimeout(state.readyTimer);
  try {
    const resp = await fetch("/ready", { headers: authHeaders(false) });
    if (resp.ok) { setReady("ready", "good"); return; }
    if (resp.status === 401) { setReady("key needed", "warn"); return; }
    const retry = parseInt(resp.headers.get("Retry-After") || "2", 10) || 2;
    setReady(`loading… (checking again in ${retry} s)`, "warn");
    state.readyTimer = setTimeout(pollReady, retry * 1000);
  } catch (e) {
    setReady("unreachable", "bad");
    state.readyTimer = setTimeout(pollReady, 5000);
  }
}

// ================================================================== wiring
window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("mimo-audio-key") || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("mimo-audio-key", $("api-key").value.trim()); loadModel(); });
  for (const box of document.querySelectorAll(".clip-input")) makeClipInput(box, null);
  speakOut = makeOutput($("speak-out"));
  addAskClip();

  const tabs = document.querySelectorAll('[role="tab"]');
  for (const t of tabs) t.addEventListener("click", () => selectTab(t, false));
  document.querySelector(".tabs").addEventListener("keydown", tabKeys);
  const fromHash = () => { // #speak, #ask, #talk open that view (links and the back button)
    const tab = location.hash.length > 1 && document.querySelector(`#tab-${CSS.escape(location.hash.slice(1))}`);
    if (tab && tab.getAttribute("aria-selected") !== "true") selectTab(tab, false);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();

  $("transcribe-run").addEventListener("click", () => runView("transcribe", transcribe,
    (err) => (err.param === "file" || err.status === 413 ? "transcribe-clip-error" : localField(err)),
    () => (transcript.text ? ` · ${transcript.text.length} characters so far` : "")));
  $("transcribe-copy").addEventListener("click", copyTranscript);
  $("transcribe-srt").addEventListener("click", () => download(subtitles("srt"), "transcript.srt", "application/x-subrip"));
  $("transcribe-vtt").addEventListener("click", () => download(subtitles("vtt"), "transcript.vtt", "text/vtt"));

  for (const r of document.querySelectorAll('input[name="speak-mode"]')) r.addEventListener("change", updateSpeakMode);
  for (const c of document.querySelectorAll(".chip")) { c.setAttribute("aria-pressed", "false"); c.addEventListener("click", () => pickStyle(c)); }
  $("speak-run").addEventListener("click", () => runView("speak", speak, (err) => {
    if (err.param === "input") return "speak-text-error";
    if (err.param === "instructions") return speakNatural() ? "speak-text-error" : "speak-instructions-error";
    if (err.param === "ref_audio" || (err.status === 413 && state.clips["speak-voice"])) return "speak-voice-error";
    if (err.status === 413) return "speak-text-error";
    return localField(err);
  }, () => (speakOut.samples ? ` · ${fmtSeconds(speakOut.seconds())} of audio${speakOut.firstAudio != null ? `, first after ${fmtSeconds(speakOut.firstAudio)}` : ""}` : "")));

  $("ask-add").addEventListener("click", addAskClip);
  $("ask-run").addEventListener("click", () => runView("ask", ask, askField,
    () => ($("ask-answer").textContent || $("ask-reasoning-text").textContent ? ` · ${$("ask-answer").textContent.length + $("ask-reasoning-text").textContent.length} characters so far` : "")));

  $("talk-send").addEventListener("click", () => runView("talk", talk, talkField));
  $("talk-reset").addEventListener("click", resetTalk);

  for (const v of ["transcribe", "speak", "ask", "talk"]) $(`${v}-stop`).addEventListener("click", () => stopView(v));
  // Ctrl/Cmd+Enter runs the visible view
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      const view = document.querySelector(".view:not(.hidden)");
      if (view) view.querySelector(".primary").click();
    }
  });
  window.addEventListener("resize", () => {
    for (const c of document.querySelectorAll(".view:not(.hidden) canvas")) if (c.redraw) c.redraw();
  });
  updateSpeakMode();
  loadModel();
});
