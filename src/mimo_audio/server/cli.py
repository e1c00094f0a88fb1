"""``mimo-audio serve``: load the model and run the OpenAI-compatible server with uvicorn.

Registered on the main parser by :func:`add_serve_command` (called from :mod:`mimo_audio.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..checkpoint import INSTRUCT_ID
from ..cli import add_model_args
from .settings import MiB, ServerSettings


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    d = ServerSettings()  # the flags' defaults are the settings' own
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible HTTP server and web page",
        description="Serve MiMo-Audio over HTTP: /v1/audio/speech, /v1/audio/transcriptions, /v1/chat/completions, "
                    "/v1/models, /health, /ready, /metrics and a web page at /. See docs/server.md.")
    add_model_args(p, INSTRUCT_ID)
    g = p.add_argument_group("serving")
    g.add_argument("--served-model-name", default=d.model_name,
                   help="the model id clients send and GET /v1/models lists (default: %(default)s)")
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health and the page "
                        "(default: $MIMO_AUDIO_API_KEY, else no key)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable); CORS is off by default")
    g.add_argument("--no-page", action="store_true", help="do not serve the web page at /")
    g.add_argument("--no-warmup", action="store_true",
                   help="skip the warm-up generation at start-up: /ready answers as soon as the model is loaded, "
                        "and the first request pays the one-time warm-up cost instead")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="most requests per engine batch (default: %(default)s)")
    g.add_argument("--batch-window-ms", type=float, default=d.batch_window_s * 1000,
                   help="how long the batcher waits for more requests before starting a batch (default: "
                        "%(default)g)")
    g.add_argument("--queue-size", type=int, default=d.queue_size,
                   help="requests allowed to wait; beyond it 429 with Retry-After (default: %(default)s)")
    g.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="per-request deadline in seconds (default: %(default)g)")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / MiB,
                   help="request body limit in MB (default: %(default)g)")
    g.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds,
                   help="decoded audio per request, in seconds (default: %(default)g)")
    g.add_argument("--decode-budget-mb", type=float, default=d.decode_budget_bytes / MiB,
                   help="memory all audio decodes in progress may hold, reserved from each upload's header before "
                        "decoding (default: %(default)g)")
    g.add_argument("--max-concurrent-decodes", type=int, default=d.max_concurrent_decodes,
                   help="audio decodes running at once (default: %(default)s)")
    g.add_argument("--decode-wait", type=float, default=d.decode_wait_s,
                   help="seconds an upload may wait for decode budget before 503 with Retry-After (default: "
                        "%(default)g)")
    g.add_argument("--max-text-chars", type=int, default=d.max_text_chars,
                   help="characters per text input (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="cap (and default) on generated groups per request; 1 group = 0.16 s of speech "
                        "(default: %(default)s)")
    g = p.add_argument_group("connections and slow clients")
    g.add_argument("--header-timeout", type=float, default=d.header_timeout_s,
                   help="seconds a request may take from its first byte to the end of its headers; then 408 and "
                        "the connection is closed (default: %(default)g)")
    g.add_argument("--body-timeout", type=float, default=d.body_timeout_s,
                   help="seconds the request body may take to arrive after the headers; then 408 (default: "
                        "%(default)g)")
    g.add_argument("--keep-alive", type=float, default=d.keep_alive_s,
                   help="seconds an idle kept-alive connection stays open (default: %(default)g)")
    g.add_argument("--max-header-kb", type=int, default=d.max_header_bytes // 1024,
                   help="request line and headers in KB; more is a 400 (default: %(default)s)")
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help="open connections; a request arriving beyond it gets 503 (default: %(default)s)")
    g.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace_s,
                   help="on SIGTERM, seconds running requests may still take to finish (default: %(default)g)")
    p.set_defaults(func=run_serve)
    return p


def settings_from_args(args) -> ServerSettings:
    return ServerSettings(
        model_name=args.served_model_name,
        api_key=args.api_key or os.environ.get("MIMO_AUDIO_API_KEY") or None,
        cors_origins=tuple(args.cors_origin),
        max_batch=args.max_batch,
        batch_window_s=args.batch_window_ms / 1000.0,
        queue_size=args.queue_size,
        timeout_s=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * MiB),
        max_audio_seconds=args.max_audio_seconds,
        max_text_chars=args.max_text_chars,
        decode_budget_bytes=int(args.decode_budget_mb * MiB),
        max_concurrent_decodes=args.max_concurrent_decodes,
        decode_wait_s=args.decode_wait,
        max_new_tokens=args.max_new_tokens,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keep_alive_s=args.keep_alive,
        max_header_bytes=args.max_header_kb * 1024,
        max_connections=args.max_connections,
        shutdown_grace_s=args.shutdown_grace,
        serve_page=not args.no_page,
        warmup=not args.no_warmup,
    )


def run_serve(args) -> int:
    try:
        import uvicorn

        from . import create_app
    except ImportError as exc:
        print(f"mimo-audio serve: error: {exc.name} is missing; install the server extra: "
              "pip install 'mimo-audio[serve]'", file=sys.stderr)
        return 1
    from ..errors import MimoAudioError
    from .protocol import DrainingServer, uvicorn_options

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"mimo-audio serve: error: {exc}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logging.getLogger("mimo_audio.server").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", args.host)
    from ..pipeline import MimoAudio

    try:
        mimo = MimoAudio.from_pretrained(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
                                         compile=args.compile, quantize=args.quantize)
    except (MimoAudioError, OSError) as exc:  # a checkpoint or option the user gave: exit 2, as every command
        print(f"mimo-audio serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    app = create_app(mimo, settings)
    # uvicorn's own access log is replaced by ours (method, path, status, duration).
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            **uvicorn_options(settings))
    DrainingServer(config, app.state.service, settings.shutdown_grace_s).run()
    return 0
