"""The ``mimo-audio`` command line.

``main(argv)`` builds one parser with a subcommand per job. Each group of commands registers itself with a
function ``add_<group>_commands(subparsers)`` that adds its parsers and sets ``func`` (``args -> exit code``)
as a default: ``codec`` here, the tasks in :mod:`mimo_audio.cli_tasks`, ``eval`` and ``batch`` in
:mod:`mimo_audio.eval.cli`, ``serve`` in :mod:`mimo_audio.server.cli`, ``data`` in :mod:`mimo_audio.cli_data`.

Errors the user can cause (:class:`~mimo_audio.errors.MimoAudioError`, ``OSError``) print one line,
``mimo-audio: error: ...``, on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import AudioInputError, MimoAudioError

EXIT_ERROR = 2
LONG_AUDIO_SECONDS = 30.0  # show a progress bar above this (and only when stderr is a terminal)



def add_model_args(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """The checkpoint options every command shares: ``--model``, ``--quantize`` and ``--compile`` (LM commands
    only), ``--tokenizer``, ``--device``, ``--dtype``."""
    from .checkpoint import TOKENIZER_ID

    g = p.add_argument_group("model")
    if default_model is not None:
        g.add_argument("--model", default=default_model, help=f"LM hub id or folder (default: {default_model})")
    g.add_argument("--tokenizer", default=TOKENIZER_ID,
                   help=f"audio tokenizer hub id or folder (default: {TOKENIZER_ID})")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    dtype_default = "float32" if default_model is None else "the LM checkpoint's; the audio tokenizer float32"
    g.add_argument("--dtype", default=None, help=f"float32, bfloat16 or float16 (default: {dtype_default})")
    if default_model is not None:
        g.add_argument("--quantize", default=None, choices=("int8", "int4"), metavar="{int8,int4}",
                       help="quantize the LM's linear weights while loading (needs torchao: "
                            "pip install 'mimo-audio[quantize]'; default: none)")
        g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the generation step functions (CUDA graphs on CUDA; the first groups "
                            "then take a while); default: the MIMO_AUDIO_COMPILE environment switch, else off")


def add_float_wav_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--float-wav", action="store_true",
                   help="write .wav as 32-bit float instead of 16-bit PCM (the default, which every tool reads)")


# ============================================================================================ codec
def _load_codec(args):
    from .codec import AudioTokenizer

    return AudioTokenizer.from_pretrained(args.tokenizer, device=args.device, dtype=args.dtype)


def _progress(desc: str, seconds: float):
    """A tqdm callback ``(done, total)`` for long audio when stderr is a terminal, else ``None``."""
    if seconds <= LONG_AUDIO_SECONDS or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=desc, total=1, unit="step", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _encode_file(codec, path: str, num_quantizers: int):
    from .audio import load_audio

    wav = load_audio(path, target_rate=codec.sample_rate, max_seconds=codec.config.max_audio_seconds)
    update, close = _progress("encoding", wav.shape[0] / codec.sample_rate)
    try:
        return codec.encode_loaded(wav, num_quantizers, progress=update)
    finally:
        close()


def _decode_codes(codec, codes, window: int | None, num_quantizers: int | None = None):
    update, close = _progress("decoding", codes.shape[0] * codec.samples_per_code / codec.sample_rate)
    try:
        return codec.decode(codes, window=window, num_quantizers=num_quantizers, progress=update)
    finally:
        close()


def check_output(path: str, suffixes: tuple[str, ...] = (".wav", ".flac")) -> None:
    """Refuse an output path before any model is loaded: a type not in ``suffixes`` or a missing folder
    (``~`` is expanded, as the writers do)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in suffixes:
        raise AudioInputError(f"{path}: unsupported output type {suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        raise AudioInputError(f"{path}: the folder {p.parent} does not exist")


def cmd_codec_encode(args) -> int:
    from .codec import save_codes

    check_output(args.output, (".safetensors",))
    codec = _load_codec(args)
    codes = _encode_file(codec, args.input, args.num_quantizers)
    save_codes(args.output, codes, sample_rate=codec.sample_rate, frame_rate=codec.sample_rate / codec.samples_per_code,
               source=Path(args.input).name)
    print(f"{args.output}: {codes.shape[0]} frames x {codes.shape[1]} codebooks", file=sys.stderr)
    return 0


def cmd_codec_decode(args) -> int:
    from .audio import save_audio
    from .codec import load_codes

    check_output(args.output)
    codes, _meta = load_codes(args.input)
    codec = _load_codec(args)
    wav = _decode_codes(codec, codes, args.window, args.num_quantizers)
    save_audio(args.output, wav.cpu(), codec.sample_rate, float32=args.float_wav)
    print(f"{args.output}: {wav.shape[0] / codec.sample_rate:.2f} s at {codec.sample_rate} Hz", file=sys.stderr)
    return 0


def cmd_codec_roundtrip(args) -> int:
    from .audio import save_audio

    check_output(args.output)
    codec = _load_codec(args)
    codes = _encode_file(codec, args.input, args.num_quantizers)
    wav = _decode_codes(codec, codes, args.window)
    save_audio(args.output, wav.cpu(), codec.sample_rate, float32=args.float_wav)
    print(f"{args.output}: {codes.shape[0]} frames x {codes.shape[1]} codebooks -> "
          f"{wav.shape[0] / codec.sample_rate:.2f} s", file=sys.stderr)
    return 0


def add_codec_commands(subparsers) -> None:
    """``mimo-audio codec encode|decode|roundtrip``."""
    codec = subparsers.add_parser("codec", help="audio tokenizer: encode audio to codes, decode codes to audio",
                                  description="Run the MiMo-Audio tokenizer alone (25 codes/s, 24 kHz output).")
    sub = codec.add_subparsers(dest="codec_command", metavar="{encode,decode,roundtrip}", required=True)

    def common(p: argparse.ArgumentParser, *, nq_default: int | None) -> None:
        add_model_args(p)
        p.add_argument("--num-quantizers", type=int, default=nq_default,
                       help="RVQ codebooks to use, 1-20" + (f" (default: {nq_default})" if nq_default else
                                                              " (default: all columns of the file)"))

    p = sub.add_parser("encode", help="audio file -> codes (.safetensors, key 'codes', shape (frames, n_q))")
    p.add_argument("input", help="audio file (wav, flac, ogg/opus, mp3; any rate and channel count)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    common(p, nq_default=8)
    p.set_defaults(func=cmd_codec_encode)

    p = sub.add_parser("decode", help="codes (.safetensors) -> audio file at 24 kHz")
    p.add_argument("input", help="codes written by `mimo-audio codec encode`")
    p.add_argument("-o", "--output", required=True, help="output .wav or .flac file")
    p.add_argument("--window", type=int, default=None,
                   help="decode independent windows of this many frames (1500 reproduces the reference)")
    common(p, nq_default=None)
    add_float_wav_arg(p)
    p.set_defaults(func=cmd_codec_decode)

    p = sub.add_parser("roundtrip", help="audio file -> codes -> audio file (hear what the tokenizer keeps)")
    p.add_argument("input", help="audio file")
    p.add_argument("-o", "--output", required=True, help="output .wav or .flac file")
    p.add_argument("--window", type=int, default=None, help="decode in independent windows of this many frames")
    common(p, nq_default=8)
    add_float_wav_arg(p)
    p.set_defaults(func=cmd_codec_roundtrip)


# ============================================================================================ quantize
def cmd_quantize(args) -> int:
    from .checkpoint import parse_device, parse_dtype, resolve
    from .lm import MimoAudioLM
    from .quantize import check_scheme, module_bytes, save_quantized

    dev = parse_device(args.device)
    check_scheme(args.scheme, dev, parse_dtype(args.dtype))
    out = Path(args.output).expanduser()
    if out.exists():
        raise MimoAudioError(f"{args.output} already exists; pass a new folder")
    if not out.parent.is_dir():
        raise MimoAudioError(f"{args.output}: the folder {out.parent} does not exist")
    folder = resolve(args.model)
    lm = MimoAudioLM.from_pretrained(folder, device=dev, dtype=args.dtype, quantize=args.scheme)
    save_quantized(lm, folder, out)
    print(f"{out}: {args.scheme}, {module_bytes(lm) / 2**20:.1f} MiB of weights", file=sys.stderr)
    return 0


def add_quantize_command(subparsers) -> None:
    """``mimo-audio quantize MODEL --scheme int8 -o FOLDER``."""
    p = subparsers.add_parser("quantize", help="write an int8/int4 quantized copy of an LM checkpoint",
                              description="Quantize the LM's linear weights with torchao and write a checkpoint "
                                          "that loads without re-quantizing (needs: pip install "
                                          "'mimo-audio[quantize]'). int4 packing is device-specific: quantize on "
                                          "the device kind (cpu or cuda) that will run it.")
    p.add_argument("model", help="LM hub id or folder (unquantized)")
    p.add_argument("--scheme", required=True, choices=("int8", "int4"), help="weight format")
    p.add_argument("-o", "--output", required=True, help="new folder to write")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="compute dtype: float32, bfloat16 or float16 (default: the checkpoint's)")
    p.set_defaults(func=cmd_quantize)


# ============================================================================================ main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mimo-audio", description="MiMo-Audio: audio tokenizer, audio LM, tasks, server.")
    parser.add_argument("--version", action="version", version=f"mimo-audio {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from .cli_data import add_data_commands
    from .cli_tasks import add_task_commands
    from .eval.cli import add_eval_commands
    from .server.cli import add_serve_command

    add_codec_commands(subparsers)
    add_task_commands(subparsers)
    add_quantize_command(subparsers)
    add_eval_commands(subparsers)
    add_serve_command(subparsers)
    add_data_commands(subparsers)
    from .train.cli import add_train_command
    from .train.codec.cli import add_train_codec_command

    add_train_command(subparsers)
    add_train_codec_command(subparsers)
    return parser


# The library's errors name its keywords; on the command line the same advice names the flags.
_FLAG_WORDS = [
    (re.compile(r"\breply='speech'"), "--reply speech"), (re.compile(r"\breply='text'"), "--reply text"),
    (re.compile(r"\bvoice=(?=[\s;,.)]|$)"), "--voice"), (re.compile(r"\binstruct=(?=[\s;,.)]|$)"), "--instruct"),
    (re.compile(r"\bnatural=True"), "--natural"), (re.compile(r"\bthinking=True"), "--thinking"),
    (re.compile(r"\bdrop thinking\b"), "drop --thinking"), (re.compile(r"\bdrop voice\b"), "drop --voice"),
    (re.compile(r"\bmax_new_tokens\b"), "--max-new-tokens"), (re.compile(r"\bmax_seconds\b"), "--max-seconds"),
    (re.compile(r"\ballow_truncated=True"), "--allow-truncated"), (re.compile(r"\bseconds must\b"), "--seconds must"),
    (re.compile(r"--model / model="), "--model"), (re.compile(r"--tokenizer / tokenizer="), "--tokenizer"),
]


def cli_words(message: str) -> str:
    """A library error message as the CLI says it: Python keywords (``voice=``, ``reply='speech'``,
    ``max_new_tokens``) become the flags that set them (``--voice``, ``--reply speech``, ``--max-new-tokens``)."""
    for pattern, flag in _FLAG_WORDS:
        message = pattern.sub(flag, message)
    return message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":  # its own parser (with a `merge` subcommand): mimo_audio.train.cli
        from .train.cli import run

        return run(argv[1:])
    if argv and argv[0] == "train-codec":  # its own parser: mimo_audio.train.codec.cli
        from .train.codec.cli import run as run_codec

        return run_codec(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MimoAudioError, OSError) as exc:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and getattr(exc, "filename", None):
            msg = f"{exc.filename}: {exc.strerror or msg}"
        print(f"mimo-audio: error: {cli_words(' '.join(msg.split()))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mimo-audio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
