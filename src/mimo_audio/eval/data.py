"""Evaluation data: the layouts users have, read into a list of item dicts.

Every item has an ``id`` (unique) and the fields its task reads: ``audio`` (a path, or a ``(samples, rate)``
pair from a Hugging Face dataset), ``text`` (the reference transcript or the text to speak), ``language``,
``speaker``, ``voice`` (a voice-prompt clip), ``instruct``, ``question`` / ``choices`` / ``answer`` /
``category``, ``examples`` (few-shot pairs), ``reference`` (a dialogue's reference answer). Layouts:

- a JSONL manifest (``.jsonl``), one object per line; relative paths are relative to the manifest's folder;
- a JSON list (``.json``), e.g. MMAU's ``mmau-test-mini.json`` (``audio_id`` → ``audio``, ``task`` →
  ``category``);
- a LibriSpeech folder (``*.trans.txt`` next to the ``.flac`` files; any depth);
- an AISHELL-1 folder (``transcript/aishell_transcript_v0.8.txt`` + ``wav/``; Chinese);
- a Seed-TTS-Eval ``meta.lst`` (``utt|prompt_text|prompt_wav|target_text``), or the folder holding it;
- a SpeechMMLU folder (the ``XiaomiMiMo/SpeechMMLU`` dataset repository: ``few_shot_prompts.json``, the question
  rows, ``audio/``), read by :func:`read_speechmmlu`;
- ``hf:NAME[:CONFIG][@SPLIT]``, a Hugging Face dataset (needs ``datasets`` and the network or its cache);
  ``hf:XiaomiMiMo/SpeechMMLU`` downloads the repository (``huggingface_hub``) and reads it as the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import MimoAudioError

AUDIO_KEYS = ("audio", "voice", "target_voice")
LAYOUTS = ("jsonl", "json", "librispeech", "aishell", "seedtts", "speechmmlu", "hf")


class DataError(MimoAudioError):
    """The evaluation data cannot be read (names the file or field and the fix)."""


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):  # MMAU-Pro: several clips
        return [_resolve(base, v) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
        return str((base / value).resolve())
    return value


def _fix_paths(item: dict, base: Path) -> dict:
    for k in AUDIO_KEYS:
        if k in item:
            item[k] = _resolve(base, item[k])
    if isinstance(item.get("examples"), list):
        item["examples"] = [
            {k: (_resolve(base, v) if k in ("input", "output", "audio") else v) for k, v in ex.items()}
            if isinstance(ex, dict) else ex for ex in item["examples"]
        ]
    return item


def _unique_ids(items: list[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    for n, it in enumerate(items):
        base = str(it.get("id", n))
        k = seen.get(base, 0)
        seen[base] = k + 1
        it["id"] = base if k == 0 else f"{base}#{k}"
    return items


def _read_jsonl(path: Path) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            obj.setdefault("id", Path(str(obj.get("audio", n))).stem if obj.get("audio") else str(n))
            items.append(_fix_paths(obj, path.parent))
    return items


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        data = data.get("data") or data.get("items") or list(data.values())
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise DataError(f"{path}: expected a list of objects (MMAU-style JSON)")
    items = []
    for n, obj in enumerate(data):
        it = dict(obj)
        if "audio" not in it and "audio_id" in it:
            it["audio"] = it["audio_id"]
        if "audio" not in it and "audio_path" in it:
            it["audio"] = it["audio_path"]
        if "category" not in it and "task" in it:
            it["category"] = it["task"]
        it.setdefault("id", str(n))
        items.append(_fix_paths(it, path.parent))
    return items


def _read_librispeech(root: Path) -> list[dict]:
    items = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            audio = next((trans.parent / f"{utt}{ext}" for ext in (".flac", ".wav")
                          if (trans.parent / f"{utt}{ext}").exists()), trans.parent / f"{utt}.flac")
            items.append({"id": utt, "audio": str(audio), "text": text.strip(), "language": "en",
                          "speaker": utt.split("-")[0]})
    return items


def _read_aishell(root: Path, split: str | None) -> list[dict]:
    trans = next(iter(sorted((root / "transcript").glob("*.txt"))), None) if (root / "transcript").is_dir() else None
    if trans is None:
        raise DataError(f"{root}: no transcript/*.txt (AISHELL-1 layout: transcript/aishell_transcript_v0.8.txt "
                        "and wav/{train,dev,test}/SPEAKER/ID.wav)")
    wav_root = root / "wav" / split if split else root / "wav"
    wavs = {p.stem: p for p in wav_root.rglob("*.wav")}
    items = []
    for line in trans.read_text(encoding="utf-8").splitlines():
        utt, _, text = line.strip().partition(" ")
        if utt in wavs:
            items.append({"id": utt, "audio": str(wavs[utt]), "text": "".join(text.split()), "language": "zh",
                          "speaker": utt[6:11] if len(utt) >= 11 else ""})
    items.sort(key=lambda it: it["id"])
    return items


def _read_seedtts(meta: Path) -> list[dict]:
    items = []
    lang = "zh" if "zh" in meta.parent.name.lower() else None
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 4:
            raise DataError(f"{meta}:{n}: expected utt|prompt_text|prompt_wav|target_text, got {len(parts)} fields")
        utt, prompt_text, prompt_wav, target = parts[:4]
        it = {"id": utt, "text": target.strip(), "voice": _resolve(meta.parent, prompt_wav),
              "voice_text": prompt_text.strip(),
              # the prompt clip is real speech with its transcript: codec and ASR runs use it
              "audio": _resolve(meta.parent, prompt_wav), "audio_text": prompt_text.strip()}
        if lang:
            it["language"] = lang
        items.append(it)
    return items

# ============================================================================================ SpeechMMLU
SPEECHMMLU_PROMPTS = "few_shot_prompts.json"
SPEECHMMLU_ROW_FIELDS = ("id", "subject", "question_text", "question_audio", "voice_id", "answer")
_AUDIO_EXTS = (".mp3", ".wav", ".flac", ".ogg")


def _existing_audio(path: Path) -> str:
    """``path`` if it exists, else the same stem with another audio extension that exists (a set converted to
    wav), else ``path`` (the item then fails with the missing file named)."""
    if path.exists():
        return str(path)
    for ext in _AUDIO_EXTS:
        alt = path.with_suffix(ext)
        if alt.exists():
            return str(alt)
    return str(path)


def _speechmmlu_rows(root: Path, subjects: list[str] | None) -> list[dict]:
    """The question rows: JSON lines / JSON lists / parquet files anywhere under ``root`` except ``audio/``; when
    there are none, the dataset's per-subject configs through ``datasets`` (as the toolkit reads them)."""
    tops = [p for p in root.iterdir() if p.name != "audio" and not p.name.startswith(".")]  # audio/: clips only
    files = sorted(f for top in tops for f in ([top] if top.is_file() else top.rglob("*"))
                   if f.is_file() and f.suffix in (".jsonl", ".json", ".parquet") and f.name != SPEECHMMLU_PROMPTS)
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".jsonl":
            rows += _read_jsonl_rows(f)
        elif f.suffix == ".json":
            data = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(data, list):
                rows += [r for r in data if isinstance(r, dict)]
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{f}: reading parquet rows needs pyarrow: pip install pyarrow") from None
            rows += pq.read_table(f).to_pylist()
    rows = [r for r in rows if "question_text" in r or "question_audio" in r]
    if not rows:
        try:
            from datasets import get_dataset_config_names, load_dataset
        except ImportError:
            raise DataError(f"{root}: no SpeechMMLU question rows (*.jsonl, *.json or *.parquet with "
                            f"{', '.join(SPEECHMMLU_ROW_FIELDS)}) and no datasets package to read the "
                            "repository's configs: pip install datasets") from None
        names = sorted(get_dataset_config_names(str(root)))
        for name in names if subjects is None else [n for n in names if n in subjects]:
            ds = load_dataset(str(root), name)
            rows += list(ds[next(iter(ds))])
    if subjects is not None:
        rows = [r for r in rows if r.get("subject") in subjects]
    return rows


def _read_jsonl_rows(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _answer_letter(value: Any, where: str) -> str:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and 0 <= value <= 3:
        return "ABCD"[value]
    if isinstance(value, str) and value.strip().upper() in ("A", "B", "C", "D"):
        return value.strip().upper()
    if isinstance(value, str) and value.strip().isdigit() and int(value) <= 3:
        return "ABCD"[int(value)]
    raise DataError(f"{where}: answer {value!r} is not an option index 0-3 or a letter A-D")


def read_speechmmlu(root: str | os.PathLike, split: str | None = None) -> list[dict]:
    """A SpeechMMLU folder -> mcq items, in subject order then row order.

    The folder is the ``XiaomiMiMo/SpeechMMLU`` dataset repository: ``few_shot_prompts.json`` (per subject a
    ``beginning`` text and ``examples`` [{``question``, ``answer``}] texts), question rows with ``id``, ``subject``,
    ``question_text`` (question and choices), ``question_audio`` (path relative to the folder), ``voice_id``
    (``english_prompt_001`` …) and ``answer`` (option index 0-3, or a letter), and the prompt clips
    ``audio/SUBJECT/prompts/SUBJECT_VOICE/SUBJECT_beginning.mp3``, ``SUBJECT_{i}_question_and_choices.mp3`` and
    ``SUBJECT_{i}_answer.mp3`` (a ``.wav``/``.flac`` of the same stem is used when the ``.mp3`` is absent).
    ``split``: ``all`` (default) or comma-separated subjects.
    """
    root = Path(root).expanduser()
    prompts_file = root / SPEECHMMLU_PROMPTS
    try:
        prompts = json.loads(prompts_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{prompts_file}: cannot read the SpeechMMLU few-shot prompts ({exc})") from None
    subjects = None if split in (None, "", "all") else [s.strip() for s in split.split(",") if s.strip()]
    if subjects is not None:
        unknown = [s for s in subjects if s not in prompts]
        if unknown:
            raise DataError(f"{root}: unknown SpeechMMLU subjects {unknown}; the folder has {sorted(prompts)}")
    items = []
    for n, row in enumerate(_speechmmlu_rows(root, subjects)):
        where = f"{root} row {n} (id {row.get('id')!r})"
        missing = [k for k in SPEECHMMLU_ROW_FIELDS if row.get(k) in (None, "")]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)} (SpeechMMLU rows need "
                            f"{', '.join(SPEECHMMLU_ROW_FIELDS)})")
        subject, voice = str(row["subject"]), str(row["voice_id"])
        meta = prompts.get(subject)
        if not isinstance(meta, dict) or "beginning" not in meta or not isinstance(meta.get("examples"), list):
            raise DataError(f"{prompts_file}: no 'beginning' and 'examples' for subject {subject!r}")
        clips = root / "audio" / subject / "prompts" / f"{subject}_{voice}"
        prompt = {
            "beginning": {"text": meta["beginning"], "audio": _existing_audio(clips / f"{subject}_beginning.mp3")},
            "examples": [{"question": {"text": ex["question"],
                                       "audio": _existing_audio(clips / f"{subject}_{i}_question_and_choices.mp3")},
                          "answer": {"text": ex["answer"],
                                     "audio": _existing_audio(clips / f"{subject}_{i}_answer.mp3")}}
                         for i, ex in enumerate(meta["examples"])],
        }
        items.append({"id": str(row["id"]), "subject": subject, "category": subject, "voice_id": voice,
                      "question": row["question_text"], "audio": _existing_audio(root / str(row["question_audio"])),
                      "answer": _answer_letter(row["answer"], where), "language": row.get("language") or "en",
                      "mmlu_prompt": prompt})
    items.sort(key=lambda it: it["subject"])  # stable: subjects in order, rows in file order within each
    return items


def _read_hf_speechmmlu(name: str, split: str | None) -> list[dict]:
    """``hf:XiaomiMiMo/SpeechMMLU``: the dataset repository downloaded (or taken from the hub cache) whole, since the
    rows name audio files inside it, then read as a folder."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=name, repo_type="dataset")
    except Exception as exc:  # offline without a cache, a wrong name
        raise DataError(f"hf:{name}: cannot download the dataset repository ({type(exc).__name__}: {exc}); "
                        "download it once online, or pass its local folder") from None
    return read_speechmmlu(folder, split)


def _hf_name(spec: str) -> str:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> NAME."""
    return spec[3:].partition("@")[0].partition(":")[0]


def _read_hf(spec: str, split: str | None) -> list[dict]:
    if _hf_name(spec).lower().endswith("speechmmlu"):
        return _read_hf_speechmmlu(_hf_name(spec), split)
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError("reading a Hugging Face dataset needs the datasets package: pip install datasets") from None
    from datasets import load_dataset

    name = spec[3:]
    name, _, sp = name.partition("@")
    name, _, config = name.partition(":")
    ds = load_dataset(name, config or None, split=sp or split or "test")
    items = []
    for n, row in enumerate(ds):
        it: dict[str, Any] = {}
        for k, v in row.items():
            if isinstance(v, dict) and "array" in v and "sampling_rate" in v:
                it["audio" if "audio" not in it else k] = (v["array"], int(v["sampling_rate"]))
            else:
                it[k] = v
        for alt in ("sentence", "transcription", "normalized_text", "transcript"):
            if "text" not in it and isinstance(it.get(alt), str):
                it["text"] = it[alt]
        it["id"] = str(it.get("id", n))
        items.append(it)
    return items


def detect_layout(data: str) -> str:
    """Which layout ``data`` is in (see the module docstring); raises naming what was expected."""
    if data.startswith("hf:"):
        return "speechmmlu" if _hf_name(data).lower().endswith("speechmmlu") else "hf"
    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(f"{data}: no such file or folder (give a .jsonl manifest, a .json list, a LibriSpeech, "
                        "AISHELL-1 or Seed-TTS-Eval folder, or hf:NAME for a Hugging Face dataset)")
    if p.is_file():
        if p.suffix == ".jsonl":
            return "jsonl"
        if p.suffix == ".json":
            return "json"
        if p.suffix == ".lst":
            return "seedtts"
        raise DataError(f"{data}: unknown file type {p.suffix!r}; use .jsonl, .json or a Seed-TTS-Eval meta.lst")
    if (p / "meta.lst").exists():
        return "seedtts"
    if (p / SPEECHMMLU_PROMPTS).exists():
        return "speechmmlu"
    if (p / "transcript").is_dir() and (p / "wav").is_dir():
        return "aishell"
    if next(p.rglob("*.trans.txt"), None) is not None:
        return "librispeech"
    raise DataError(f"{data}: a folder in no known layout (LibriSpeech *.trans.txt, AISHELL-1 transcript/ + wav/, "
                    "Seed-TTS-Eval meta.lst, SpeechMMLU few_shot_prompts.json); or give a .jsonl manifest")


def load_items(data: str, *, limit: int | None = None, split: str | None = None) -> list[dict]:
    """Read ``data`` (any layout above) into items; ``limit`` keeps the first N in the data's order."""
    layout = detect_layout(data)
    p = Path(data).expanduser()
    if layout == "jsonl":
        items = _read_jsonl(p)
    elif layout == "json":
        items = _read_json(p)
    elif layout == "librispeech":
        items = _read_librispeech(p)
    elif layout == "aishell":
        items = _read_aishell(p, split)
    elif layout == "seedtts":
        items = _read_seedtts(p if p.is_file() else p / "meta.lst")
    elif layout == "speechmmlu":
        items = _read_hf(data, split) if data.startswith("hf:") else read_speechmmlu(p, split)
    else:
        items = _read_hf(data, split)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be a positive integer, got {limit}")
        items = items[:limit]
    if not items:
        raise DataError(f"{data}: no items found")
    return _unique_ids(items)
