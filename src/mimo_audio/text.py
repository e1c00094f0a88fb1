"""The text tokenizer: the checkpoint's ``tokenizer.json`` through the ``tokenizers`` library (SPEC §7).

Every special token MiMo-Audio uses is resolved *by name* when the tokenizer is loaded, into a frozen
:class:`SpecialIds`. Nothing is ever added at run time: a checkpoint whose tokenizer lacks one of them is
rejected with a :class:`~mimo_audio.errors.CheckpointError` naming the token.

Example (ids are those of whatever checkpoint is loaded; the released model has ``empty == 151667``)::

    tok = TextTokenizer.from_folder("XiaomiMiMo/MiMo-Audio-7B-Instruct")   # folder or hub id
    tok.encode("<|im_start|>user\\n")      # -> [im_start, <ids of "user">, <id of "\\n">]
    tok.ids.empty                          # the <|empty|> id
    tok.decode([tok.ids.sostm, 10_000_000]) # -> "<|sostm|>" (ids without a token are skipped)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

#: SpecialIds field -> the token's text. ``eos`` and ``pad`` are read from the tokenizer config instead.
SPECIAL_TOKENS: dict[str, str] = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "sosp": "<|sosp|>",
    "eosp": "<|eosp|>",
    "empty": "<|empty|>",
    "human": "<|Human|>",
    "speechlm": "<|SpeechLM|>",
    "sostm": "<|sostm|>",
    "eostm": "<|eostm|>",
    "eot": "<|eot|>",
}

#: Files fetched when the tokenizer is loaded from a hub id (no weights).
TOKENIZER_PATTERNS = ["*.json", "*.txt"]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens, resolved by name from the checkpoint's tokenizer.

    ``eos`` is the tokenizer config's ``eos_token`` (``<|endoftext|>`` when the config names none); ``pad`` is
    its ``pad_token`` or None.
    """

    endoftext: int
    eos: int
    pad: int | None
    im_start: int
    im_end: int
    sosp: int
    eosp: int
    empty: int
    human: int
    speechlm: int
    sostm: int
    eostm: int
    eot: int

    def by_token(self) -> dict[str, int]:
        """Token text -> id for every named special token (``eos``/``pad`` are aliases and not listed)."""
        return {text: getattr(self, name) for name, text in SPECIAL_TOKENS.items()}


def _token_name(value) -> str | None:
    """A token as written in tokenizer_config.json / special_tokens_map.json: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); fix or remove the file") from None
    return data if isinstance(data, dict) else {}


class TextTokenizer:
    """Byte-level BPE text tokenizer of a MiMo-Audio LM checkpoint, with its special ids in :attr:`ids`."""

    def __init__(self, tokenizer, *, eos_token: str | None = None, pad_token: str | None = None,
                 source: str = "tokenizer"):
        self._tok = tokenizer
        self.source = source
        resolved: dict[str, int | None] = {}
        for name, text in SPECIAL_TOKENS.items():
            resolved[name] = self._special_id(text, what=name)
        resolved["eos"] = self._special_id(eos_token or SPECIAL_TOKENS["endoftext"], what="eos_token")
        resolved["pad"] = self._special_id(pad_token, what="pad_token") if pad_token else None
        self.ids = SpecialIds(**resolved)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_folder(cls, path_or_hub_id: str | os.PathLike) -> TextTokenizer:
        """Load from a checkpoint folder holding ``tokenizer.json`` (or a hub id, fetched without weights).

        ``tokenizer_config.json`` / ``special_tokens_map.json`` are read when present for ``eos_token`` and
        ``pad_token``.
        """
        from .checkpoint import resolve

        folder = resolve(path_or_hub_id, allow_patterns=TOKENIZER_PATTERNS)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(
                f"no tokenizer.json in {folder}; pass the LM checkpoint folder (it ships tokenizer.json), "
                "e.g. XiaomiMiMo/MiMo-Audio-7B-Instruct"
            )
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a plain Exception on malformed files
            raise CheckpointError(f"cannot load {file} ({exc}); the file is not a valid tokenizers file") from None
        eos = pad = None
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins when both exist
            p = folder / name
            if p.is_file():
                data = _read_json(p)
                eos = _token_name(data.get("eos_token")) or eos
                pad = _token_name(data.get("pad_token")) or pad
        return cls(tok, eos_token=eos, pad_token=pad, source=str(folder))

    from_pretrained = from_folder

    def _special_id(self, text: str, *, what: str) -> int:
        idx = self._tok.token_to_id(text)
        if idx is None:
            raise CheckpointError(
                f"the text tokenizer of {self.source} has no special token {text!r} ({what}); MiMo-Audio needs it. "
                "Use the tokenizer files shipped with a MiMo-Audio LM checkpoint (tokens are never added at run time)"
            )
        if self._tok.encode(text, add_special_tokens=False).ids != [idx]:
            raise CheckpointError(
                f"{text!r} ({what}) is in the vocabulary of {self.source} but not registered as an added token, so "
                "text containing it would not become one id; use the tokenizer.json of a MiMo-Audio LM checkpoint"
            )
        return idx

    # ------------------------------------------------------------------ use
    @property
    def size(self) -> int:
        """Number of ids the tokenizer defines (may be smaller than the LM's ``vocab_size``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added; special tokens written in the text become one id."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def has_token(self, idx: int) -> bool:
        return idx >= 0 and self._tok.id_to_token(idx) is not None

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ``ids``; ids that have no token (negative fillers, ids ≥ the tokenizer size) are skipped."""
        kept = [i for i in (int(x) for x in ids) if self.has_token(i)]
        return self._tok.decode(kept, skip_special_tokens=skip_special)

    def __repr__(self) -> str:
        return f"TextTokenizer(source={self.source!r}, size={self.size})"
