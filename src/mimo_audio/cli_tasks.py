"""The task commands of ``mimo-audio``: transcribe, speak, understand, chat, few-shot, continue, download.

Registered on the main parser by :func:`add_task_commands` (called from :mod:`mimo_audio.cli`). Each command
is thin over :class:`mimo_audio.pipeline.MimoAudio`; errors the user can cause (a bad file, an offline hub, a
too-long prompt) are raised as MimoAudioError/OSError, which :func:`mimo_audio.cli.main` prints as one line with a
non-zero exit, without a traceback. Output files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .checkpoint import BASE_ID as BASE
from .checkpoint import INSTRUCT_ID as INSTRUCT
from .checkpoint import TOKENIZER_ID as TOKENIZER
from .cli import add_float_wav_arg, add_model_args, check_output


# ============================================================================================ plumbing
def _add_generation_args(p: argparse.ArgumentParser, limit: str = "") -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"limit on generated LM steps (1 step = 0.16 s of audio){limit}")
    g.add_argument("--temperature", type=float, default=None, help="text sampler temperature; 0 = greedy (task preset otherwise)")
    g.add_argument("--top-k", type=int, default=None, help="text sampler top-k")
    g.add_argument("--top-p", type=float, default=None, help="text sampler top-p")
    g.add_argument("--greedy", action="store_true", help="deterministic decoding (argmax) for text and audio")
    g.add_argument("--stream", action="store_true", help="print text as it is generated")
    g.add_argument("--json", action="store_true", help="print one JSON object per result instead of plain text")


def _add_output_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("-o", "--output", default=default,
                   help=f"where to write the speech (.wav or .flac; default: {default}); several results get -1, -2, ...")
    add_float_wav_arg(p)


def _gen_kwargs(args) -> dict:
    kw = {"seed": args.seed, "max_new_tokens": args.max_new_tokens}
    for name in ("temperature", "top_k", "top_p"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.greedy:
        kw["greedy"] = True
    return kw


def _load(args):
    from .pipeline import MimoAudio

    return MimoAudio.from_pretrained(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
                                     quantize=args.quantize, compile=args.compile)


def _numbered(path: str, i: int, n: int) -> str:
    if n == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{i + 1}{p.suffix}"))


def _emit(args, replies, *, sources=None, output: str | None = None) -> int:
    """Print (and save) results: plain text, or one JSON object per line with --json.

    Every result is handled, whatever happened to the ones before it: a result with speech is written, one that
    failed (an ``Exception`` in ``replies``, or a speech result with no audio) is reported, and the others still
    run. Returns the exit status: 0 when every result succeeded, 1 otherwise (after a summary naming each failure).
    """
    failures: list[str] = []
    n = len(replies)
    for i, reply in enumerate(replies):
        name = f"result {i + 1}" + (f" ({sources[i]})" if sources is not None and n > 1 else "")
        if isinstance(reply, Exception):
            message = " ".join(str(reply).split())
            failures.append(f"{name}: {message}")
            if args.json:
                obj = {"error": message}
                if sources is not None:
                    obj["input"] = sources[i]
                print(json.dumps(obj, ensure_ascii=False))
            else:
                print(f"error: {name}: {message}", file=sys.stderr)
            continue
        saved = None
        no_speech = False
        if output and reply.audio is not None:
            if reply.audio.numel() == 0:
                no_speech = True
                failures.append(f"{name}: the model produced no speech (finish: {reply.finish_reason}); nothing "
                                "written for it. Try another --seed or a larger --max-new-tokens")
            else:
                saved = _save(args, reply, _numbered(output, i, n))
        if args.json:
            obj = {"text": reply.text, "finish_reason": reply.finish_reason}
            if sources is not None:
                obj["input"] = sources[i]
            if saved:
                obj.update(audio=saved, sample_rate=reply.sample_rate, seconds=round(reply.duration, 3))
            if no_speech:
                obj["error"] = "no speech was produced"
            print(json.dumps(obj, ensure_ascii=False))
        else:
            if not getattr(args, "stream", False):
                prefix = f"{sources[i]}\t" if sources is not None and n > 1 else ""
                print(prefix + terminal_safe(reply.text, sys.stdout))
            if saved:
                print(f"wrote {saved} ({reply.duration:.2f} s)", file=sys.stderr)
    if not failures:
        return 0
    done = n - len(failures)
    summary = f"{len(failures)} of {n} results failed" if n > 1 else "failed"
    print(f"mimo-audio {getattr(args, 'command', '')}: {summary}" + (f" ({done} succeeded)" if n > 1 else "")
          + ":\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1


def _save(args, reply, path: str) -> str:
    from .audio import save_audio

    return str(save_audio(path, reply.audio, reply.sample_rate, float32=getattr(args, "float_wav", False)))


def _run(args, method: str, *pos, output: str | None = None, sources=None, **kw) -> int:
    """Call ``mimo.<method>`` (or its stream twin with --stream), print the results; returns the exit status.

    When ``sources`` is given, ``pos[0]`` is the batch (one entry per source): if the batch as a whole is refused
    (one bad file, one text too long), each entry is run on its own so that the good ones still give results and
    each bad one is named."""
    from .errors import MimoAudioError
    from .pipeline import Reply

    mimo = _load(args)
    kw.update(_gen_kwargs(args))

    def call(*pos_):
        if getattr(args, "stream", False):
            replies = {}
            for piece in getattr(mimo, f"stream_{method}")(*pos_, **kw):
                if piece.text and not args.json:
                    print(terminal_safe(piece.text, sys.stdout), end="", flush=True)
                if piece.done:
                    replies[piece.index] = piece.reply
                    if not args.json:
                        print(flush=True)
            return [replies[i] for i in sorted(replies)]
        out = getattr(mimo, method)(*pos_, **kw)
        return out if isinstance(out, list) else [out]

    batched = sources is not None and isinstance(pos[0], list) and len(pos[0]) > 1
    try:
        result = call(*pos)
    except MimoAudioError:
        if not batched:
            raise
        result = []
        for item in pos[0]:  # find which entries fail; the others still run
            try:
                result.extend(call(item, *pos[1:]))
            except MimoAudioError as exc:
                result.append(exc)
    result = [Reply(text=r) if isinstance(r, str) else r for r in result]  # transcribe/understand give strings
    return _emit(args, result, sources=sources, output=output)


def terminal_safe(text: str, stream) -> str:
    """``text`` for printing: on a terminal, control characters (ESC, CR, backspace, ...; not newline or tab) are
    shown escaped (``\\x1b``) so a transcript cannot move the cursor, recolour or rewrite the screen; into a
    pipe or file the text is unchanged."""
    if not getattr(stream, "isatty", lambda: False)():
        return text
    return "".join(ch if ch in "\n\t" or (ch.isprintable() and not 0x80 <= ord(ch) < 0xA0)
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


# ============================================================================================ commands
def cmd_transcribe(args) -> int:
    kw = {}
    if args.max_seconds is not None and not args.max_seconds > 0:
        from .errors import PromptError

        raise PromptError(f"--max-seconds must be positive, got {args.max_seconds:g}")
    close = None
    if not args.stream:  # long audio (over 30 s) is split at silences and read as a stream, with a progress bar
        kw = {"max_seconds": args.max_seconds, "allow_truncated": args.allow_truncated}
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(desc="transcribing", total=1.0, unit="s", file=sys.stderr, leave=False,
                       bar_format="{desc}: {percentage:3.0f}% {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")

            def progress(done: float, total: float) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            kw["progress"], close = progress, bar.close
    try:
        return _run(args, "transcribe", list(args.audio) if len(args.audio) > 1 else args.audio[0],
                    sources=args.audio, **kw)
    finally:
        if close is not None:
            close()


def cmd_speak(args) -> int:
    check_output(args.output)
    texts = args.text
    if args.file:
        texts = [*texts, *(line.strip() for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip())]
    if not texts:
        from .errors import PromptError

        raise PromptError("nothing to say: give the text as an argument or with --file")
    return _run(args, "speak", texts if len(texts) > 1 else texts[0], instruct=args.instruct, voice=args.voice,
                natural=args.natural, output=args.output, sources=texts)


def cmd_understand(args) -> int:
    audio = args.audio if len(args.audio) > 1 else args.audio[0]
    return _run(args, "understand", audio, args.question, thinking=args.thinking)


def cmd_few_shot(args) -> int:
    check_output(args.output)
    examples = []
    for item in args.example or []:
        inp, out, transcript = item
        examples.append({"input": inp, "output": out, "transcript": transcript})
    if args.examples:
        examples.extend(_read_examples(args.examples))
    return _run(args, "few_shot", examples, args.audio, instruction=args.instruction, output=args.output)


def _read_examples(path: str) -> list[dict]:
    """Examples from a JSON list or JSON-lines file; relative audio paths are relative to the file."""
    from .errors import PromptError

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [json.loads(s) for s in text.splitlines() if s.strip()]
    except ValueError as exc:
        raise PromptError(f"{path}: not JSON / JSON lines ({exc}); each example is "
                          '{"input": "in.wav", "output": "out.wav", "transcript": "..."}') from None
    out = []
    for i, ex in enumerate(data):
        if not isinstance(ex, dict):
            raise PromptError(f"{path}: example {i + 1} is not an object with input, output and transcript")
        ex = dict(ex)
        for key in ("input", "output"):
            if isinstance(ex.get(key), str) and not os.path.isabs(ex[key]):
                ex[key] = str(p.parent / ex[key])
        out.append(ex)
    return out


def cmd_continue(args) -> int:
    check_output(args.output)
    return _run(args, "continue_speech", args.audio, seconds=args.seconds, output=args.output)


def cmd_chat(args) -> int:
    if args.reply == "speech":
        check_output(args.output)
    if not args.input and args.text is None:
        return _interactive_chat(args)
    from .errors import AudioInputError, PromptError

    message = {"role": "user"}
    if args.input:
        message = _user_message(args.input)
        if "text" in message and Path(args.input).suffix.lower() in AUDIO_SUFFIXES:
            raise AudioInputError(f"{args.input}: no such audio file; check the path")
        if "text" in message and args.text is not None:
            raise PromptError(f"{args.input!r} is not an audio file, and --text gives the text of the turn too; "
                              "pass the text once (as the argument or with --text), or an audio file with --text")
    if args.text is not None:  # with an audio file: one user turn with both
        message["text"] = args.text
    return _run(args, "chat", [message], reply=args.reply, voice=args.voice, system_prompt=args.system,
                thinking=args.thinking, output=args.output if args.reply == "speech" else None)


def _user_message(entry: str) -> dict:
    """A user turn from a command-line entry: an existing file is audio, anything else is text."""
    p = Path(entry).expanduser()
    if p.is_file():
        return {"role": "user", "audio": str(p)}
    return {"role": "user", "text": entry}


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
HELP_INTERACTIVE = (
    "Type a message, or the path of an audio file to speak it. Commands: /reset (forget the conversation), "
    "/quit (or Ctrl-D)."
)


def _interactive_chat(args) -> int:
    """A conversation on stdin/stdout: the history is kept here and passed to every chat() call."""
    from .errors import AudioInputError, PromptError

    mimo = _load(args)
    out = sys.stdout
    print(f"mimo-audio chat ({args.reply} replies). {HELP_INTERACTIVE}", file=out, flush=True)
    history: list[dict] = []
    turn = 0
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=out)
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit", "/q"):
            break
        if line == "/reset":
            history.clear()
            print("(conversation cleared)", file=out, flush=True)
            continue
        if line in ("/help", "/?"):
            print(HELP_INTERACTIVE, file=out, flush=True)
            continue
        p = Path(line).expanduser()
        if line.startswith("/") and " " not in line and "/" not in line[1:]:
            print(f"unknown command {line}; {HELP_INTERACTIVE}", file=out, flush=True)
            continue
        if p.suffix.lower() in AUDIO_SUFFIXES and not p.is_file():
            print(f"error: {line}: no such audio file; check the path", file=out, flush=True)
            continue
        message = _user_message(line)
        try:
            reply = mimo.chat([*history, message], reply=args.reply, voice=args.voice, system_prompt=args.system,
                              thinking=args.thinking, **_gen_kwargs(args))
        except (AudioInputError, PromptError) as exc:  # a bad turn does not end the session
            print(f"error: {' '.join(str(exc).split())}", file=out, flush=True)
            continue
        turn += 1
        print(f"mimo> {terminal_safe(reply.text, out)}", file=out, flush=True)
        if reply.audio is not None and reply.audio.numel():
            path = _save(args, reply, _numbered(args.output, turn - 1, 2))
            print(f"(speech: {path}, {reply.duration:.2f} s)", file=out, flush=True)
        elif reply.audio is not None:
            print("(no speech was produced this turn)", file=out, flush=True)
        if args.reply == "speech" and not (reply.answer.strip() and reply.codes is not None and reply.codes.numel()):
            # spoken-dialogue history needs each reply's text and speech: keep the user turn only
            print("(this reply lacks text or speech and is left out of the history)", file=out, flush=True)
            history.append(message)
            continue
        history += [message, reply.as_message()]
    return 0


def cmd_download(args) -> int:
    from .checkpoint import resolve, safetensors_files

    ids = list(args.repos)
    if not ids:
        ids = [INSTRUCT, TOKENIZER]
        if args.base:
            ids.append(BASE)
    for rid in ids:
        local = Path(os.fspath(rid)).expanduser()
        if local.is_dir():
            safetensors_files(local)  # a local folder: check it, nothing to fetch
            print(f"{rid}: local folder, nothing to download", file=sys.stderr)
            print(str(local))
            continue
        print(f"fetching {rid} ...", file=sys.stderr, flush=True)
        folder = resolve(rid, downloading=True)
        safetensors_files(folder)
        print(str(folder))
    return 0


# ============================================================================================ parser
def add_task_commands(subparsers) -> None:
    """Register the task commands on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""

    def add(name, help_, default_model, func, *, gen=True):
        p = subparsers.add_parser(name, help=help_, description=help_)
        if default_model:
            add_model_args(p, default_model)
        if gen:
            from .tasks import COMMANDS, TASKS, command_of

            limits = {TASKS[t].max_new_tokens for t in COMMANDS[command_of(name)]}  # the task table's defaults
            _add_generation_args(p, f"; default {max(limits)}" if name != "continue" else "; default: --seconds")
        p.set_defaults(func=func, command=name)
        return p

    p = add("transcribe", "speech recognition (Instruct model)", INSTRUCT, cmd_transcribe)
    p.add_argument("audio", nargs="+", help="audio file(s); several run as one batch; audio over 30 s is split "
                                            "at silences and transcribed piece by piece (any length)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="refuse audio longer than this many seconds (default: no limit for transcribe)")
    p.add_argument("--allow-truncated", action="store_true",
                   help="transcribe what a truncated file holds (with a warning) instead of refusing it")

    p = add("speak", "text to speech: plain, styled (--instruct), described (--natural) or in a voice (--voice) "
            "(Instruct model)", INSTRUCT, cmd_speak)
    p.add_argument("text", nargs="*", help="text to speak; several run as one batch")
    p.add_argument("--file", help="read texts from a file, one per line")
    p.add_argument("--instruct", help="style instruction, e.g. 'Speak slowly and happily'")
    p.add_argument("--natural", action="store_true",
                   help="the text is a natural-language description followed by what to say, e.g. "
                        "'In a breathless young male voice: wait for me!'")
    p.add_argument("--voice", help="audio file whose voice to use")
    _add_output_arg(p, "speech.wav")

    p = add("understand", "answer a question about audio (Instruct model)", INSTRUCT, cmd_understand)
    p.add_argument("audio", nargs="+", help="audio file(s); several are one multi-clip question")
    p.add_argument("-q", "--question", required=True, help="the question or instruction")
    p.add_argument("--thinking", action="store_true", help="let the model think before answering")

    p = add("chat", "spoken or text dialogue; without input, an interactive session (Instruct model)", INSTRUCT,
            cmd_chat)
    p.add_argument("input", nargs="?", help="audio file of the user turn (anything that is not a file is its text); "
                                            "omit for an interactive session")
    p.add_argument("--text", help="text of the user turn; with an audio file as input, one turn with both "
                                  "(text given twice is an error)")
    p.add_argument("--reply", choices=("speech", "text"), default="speech", help="reply in speech or text (default: speech)")
    p.add_argument("--voice", help="audio file whose voice the assistant uses")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--thinking", action="store_true", help="think before a text reply")
    _add_output_arg(p, "reply.wav")

    p = add("few-shot", "in-context speech-to-speech from examples (Base model)", BASE, cmd_few_shot)
    p.add_argument("audio", help="the input audio to transform")
    p.add_argument("--example", nargs=3, action="append", metavar=("INPUT", "OUTPUT", "TRANSCRIPT"),
                   help="one example: input audio, output audio, the output's transcript (repeatable)")
    p.add_argument("--examples", help="JSON / JSON-lines file of {input, output, transcript} examples")
    p.add_argument("--instruction", help="what to do, e.g. 'Convert the timbre of the input speech to target timbre.'")
    _add_output_arg(p, "few-shot.wav")

    p = add("continue", "continue speech from an audio prompt (Base model)", BASE, cmd_continue)
    p.add_argument("audio", help="the audio to continue")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of speech to add (default: 10)")
    _add_output_arg(p, "continued.wav")

    p = add("download", "pre-fetch checkpoints into the Hugging Face cache (with progress)", None, cmd_download,
            gen=False)
    p.add_argument("repos", nargs="*", help=f"hub ids (default: {INSTRUCT} and {TOKENIZER})")
    p.add_argument("--base", action="store_true", help=f"also fetch {BASE} (few-shot and continuation)")
