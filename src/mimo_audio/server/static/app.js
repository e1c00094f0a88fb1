// MiMo-Audio web page: record or upload audio, run a task against this server's OpenAI-compatible API,
// play and download the result. Streaming replies are played as they arrive (PCM deltas into WebAudio).
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 24000; // MiMo's output rate; pcm deltas are 16-bit little-endian mono at this rate
const state = { audio: null, model: "mimo-audio", recorder: null, chunks: [], history: [], resultUrl: null };

// ------------------------------------------------------------------ helpers
function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function headers(json) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function apiError(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status}`;
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

// Any audio the browser can decode (webm/opus from MediaRecorder, m4a, mp3, ...) -> a mono 16-bit wav Blob.
async function toWav(blob) {
  const ctx = new (window.AudioContext || window.webkitAudioContext)();
  try {
    const decoded = await ctx.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const data = decoded.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
    }
    return encodeWav(mono, decoded.sampleRate);
  } finally {
    ctx.close();
  }
}

async function setInputAudio(blob, label) {
  let wav = blob;
  try { wav = await toWav(blob); } catch (e) { /* the server may still decode it (flac/ogg/mp3) */ }
  state.audio = wav;
  $("input-audio").src = URL.createObjectURL(wav);
  $("input-info").textContent = `${label} (${Math.round(wav.size / 1024)} kB)`;
}

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
        onEvent(JSON.parse(data));
      }
    }
  }
}

// Plays pcm16 chunks as they arrive and keeps them for the final wav.
class StreamPlayer {
  constructor() {
    this.ctx = new (window.AudioContext || window.webkitAudioContext)({ sampleRate: RATE });
    this.t = 0;
    this.parts = [];
    this.leftover = new Uint8Array(0);
  }
  push(bytes) {
    if (this.leftover.length) { // keep 16-bit samples aligned across chunks
      const merged = new Uint8Array(this.leftover.length + bytes.length);
      merged.set(this.leftover); merged.set(bytes, this.leftover.length); bytes = merged;
    }
    const even = bytes.length - (bytes.length % 2);
    this.leftover = bytes.slice(even);
    const samples = pcm16ToFloat(bytes.subarray(0, even));
    if (!samples.length) return;
    this.parts.push(samples);
    const buffer = this.ctx.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    this.t = Math.max(this.t, this.ctx.currentTime + 0.05);
    src.start(this.t);
    this.t += buffer.duration;
  }
  wav() {
    const n = this.parts.reduce((a, p) => a + p.length, 0);
    const all = new Float32Array(n);
    let o = 0;
    for (const p of this.parts) { all.set(p, o); o += p.length; }
    return encodeWav(all, RATE);
  }
}

function showAudio(blob) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  $("result-audio").src = state.resultUrl;
  const a = $("download");
  a.href = state.resultUrl;
  a.classList.remove("hidden");
}

function extras() {
  const out = {};
  const mnt = parseInt($("max-new-tokens").value, 10);
  if (mnt > 0) out.max_new_tokens = mnt;
  const seed = parseInt($("seed").value, 10);
  if (seed >= 0) out.seed = seed;
  return out;
}

function needAudio() {
  if (!state.audio) throw new Error("Record or choose an audio file first.");
}

// ------------------------------------------------------------------ tasks
async function transcribe(stream) {
  needAudio();
  const form = new FormData();
  form.append("file", state.audio, "audio.wav");
  form.append("model", state.model);
  for (const [k, v] of Object.entries(extras())) form.append(k, String(v));
  if (stream) form.append("stream", "true");
  const resp = await fetch("/v1/audio/transcriptions", { method: "POST", headers: headers(false), body: form });
  if (!resp.ok) throw new Error(await apiError(resp));
  if (!stream) { $("result-text").textContent = (await resp.json()).text; return; }
  let text = "";
  await readSSE(resp, (ev) => {
    if (ev.type === "transcript.text.delta") { text += ev.delta; $("result-text").textContent = text; }
    else if (ev.type === "transcript.text.done") $("result-text").textContent = ev.text;
    else if (ev.type === "error") throw new Error(ev.error.message);
  });
}

async function speak(stream) {
  const text = $("text").value.trim();
  if (!text) throw new Error("Type the text to speak.");
  const body = { model: state.model, input: text, ...extras() };
  const instr = $("instructions").value.trim();
  if (instr) body.instructions = instr;
  if ($("use-voice").checked) { needAudio(); body.ref_audio = "data:audio/wav;base64," + await blobToBase64(state.audio); }
  if (stream) { body.stream_format = "sse"; body.response_format = "pcm"; } else body.response_format = "wav";
  const resp = await fetch("/v1/audio/speech", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(await apiError(resp));
  if (!stream) { showAudio(await resp.blob()); $("result-text").textContent = "(speech)"; return; }
  const player = new StreamPlayer();
  await readSSE(resp, (ev) => {
    if (ev.type === "speech.audio.delta") player.push(b64ToBytes(ev.audio));
    else if (ev.type === "error") throw new Error(ev.error.message);
  });
  showAudio(player.wav());
  $("result-text").textContent = "(speech)";
}

async function chat(messages, wantAudio, stream) {
  const body = { model: state.model, messages, stream, ...extras() };
  if (wantAudio) { body.modalities = ["text", "audio"]; body.audio = { voice: "default", format: stream ? "pcm16" : "wav" }; }
  const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(await apiError(resp));
  if (!stream) {
    const msg = (await resp.json()).choices[0].message;
    if (msg.audio) { showAudio(new Blob([b64ToBytes(msg.audio.data)], { type: "audio/wav" })); return { text: msg.audio.transcript, audioId: msg.audio.id }; }
    return { text: msg.content || "" };
  }
  let text = "";
  let audioId = null;
  const player = wantAudio ? new StreamPlayer() : null;
  await readSSE(resp, (ev) => {
    if (ev.error) throw new Error(ev.error.message);
    const delta = (ev.choices && ev.choices[0] && ev.choices[0].delta) || {};
    if (delta.content) text += delta.content;
    if (delta.audio) {
      audioId = delta.audio.id || audioId;
      if (delta.audio.transcript) text += delta.audio.transcript;
      if (delta.audio.data) player.push(b64ToBytes(delta.audio.data));
    }
    $("result-text").textContent = text;
  });
  if (player) showAudio(player.wav());
  return { text, audioId };
}

async function understand(stream) {
  needAudio();
  const question = $("text").value.trim() || "Describe this audio.";
  const data = await blobToBase64(state.audio);
  const reply = await chat([{ role: "user", content: [
    { type: "input_audio", input_audio: { data, format: "wav" } }, { type: "text", text: question }] }], false, stream);
  $("result-text").textContent = reply.text;
}

async function talk(stream) {
  needAudio();
  const data = await blobToBase64(state.audio);
  const user = { role: "user", content: [{ type: "input_audio", input_audio: { data, format: "wav" } }] };
  const reply = await chat([...state.history, user], true, stream);
  state.history.push(user, { role: "assistant", content: reply.text, audio: reply.audioId ? { id: reply.audioId } : undefined });
  const turn = document.createElement("div");
  turn.className = "turn";
  turn.textContent = `you: (audio)  ·  MiMo: ${reply.text}`;
  $("conversation").appendChild(turn);
}

const TASKS = { transcribe, speak, understand, talk };

// ------------------------------------------------------------------ UI wiring
function updateFields() {
  const task = $("task").value;
  $("text-row").classList.toggle("hidden", !(task === "speak" || task === "understand"));
  $("text-label").textContent = task === "speak" ? "Text to speak" : "Question about the audio";
  $("instructions-row").classList.toggle("hidden", task !== "speak");
  $("voice-row").classList.toggle("hidden", task !== "speak");
  $("new-conversation").classList.toggle("hidden", task !== "talk");
}

async function run() {
  const task = $("task").value;
  $("run").disabled = true;
  $("result-text").textContent = "";
  $("result-audio").removeAttribute("src");
  $("download").classList.add("hidden");
  setStatus(`Running ${task}…`);
  const t0 = performance.now();
  try {
    await TASKS[task]($("stream").checked);
    setStatus(`Done: ${task} in ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
  } catch (e) {
    setStatus(e.message || String(e), true);
  } finally {
    $("run").disabled = false;
  }
}

async function startRecording() {
  try {
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    state.chunks = [];
    const rec = new MediaRecorder(media);
    rec.ondataavailable = (e) => { if (e.data.size) state.chunks.push(e.data); };
    rec.onstop = async () => {
      media.getTracks().forEach((t) => t.stop());
      await setInputAudio(new Blob(state.chunks, { type: rec.mimeType }), "recording");
      setStatus("Recorded.");
    };
    rec.start();
    state.recorder = rec;
    $("record").disabled = true; $("stop").disabled = false;
    setStatus("Recording… press Stop when done.");
  } catch (e) {
    setStatus("Microphone unavailable: " + (e.message || e), true);
  }
}

function stopRecording() {
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
  $("record").disabled = false; $("stop").disabled = true;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers(false) });
    if (!resp.ok) { $("model-name").textContent = resp.status === 401 ? "(enter the API key)" : await apiError(resp); return; }
    const body = await resp.json();
    state.model = body.data[0].id;
    $("model-name").textContent = state.model;
  } catch (e) { $("model-name").textContent = "(server unreachable)"; }
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("mimo-audio-key") || "";
  $("api-key").addEventListener("change", () => { sessionStorage.setItem("mimo-audio-key", $("api-key").value.trim()); loadModel(); });
  $("file").addEventListener("change", async (e) => {
    const f = e.target.files[0];
    if (f) { await setInputAudio(f, f.name); setStatus("Audio loaded."); }
  });
  $("record").addEventListener("click", startRecording);
  $("stop").addEventListener("click", stopRecording);
  $("task").addEventListener("change", updateFields);
  $("run").addEventListener("click", run);
  $("new-conversation").addEventListener("click", () => { state.history = []; $("conversation").textContent = ""; });
  updateFields();
  loadModel();
});
