"""OpenAI-compatible HTTP server for MiMo-Audio, with a small web page.

Use ``create_app(backend, settings)`` to get a FastAPI app over any object with the pipeline's batch-core
interface (``prepare(task, **kwargs)`` and ``stream(requests)``), or ``mimo-audio serve`` from the command line.
The server needs the ``serve`` extra (fastapi, uvicorn, python-multipart).
"""

from __future__ import annotations

from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def create_app(backend, settings: ServerSettings | None = None):
    """Build the FastAPI app serving ``backend`` (a ``MimoAudio`` or anything with its batch-core interface)."""
    from .app import create_app as _create_app

    return _create_app(backend, settings)
