"""`humanaes serve`: the HTTP scoring service and web page (FastAPI + uvicorn, `humanaes[serve]`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from humanaes.cli.score import DEVICES, DTYPES


@click.command("serve")
@click.option("--model", default=None, metavar="NAME|DIR", help="Model to serve (default: the bundled humanaes-mini).")
@click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES, case_sensitive=False), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="PyTorch CPU threads per worker.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all interfaces).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True, help="Most images per model batch.")
@click.option("--max-wait-ms", type=float, default=10.0, show_default=True,
              help="How long the first image of a batch waits for others.")
@click.option("--max-queue", type=int, default=32, show_default=True,
              help="Scoring requests admitted at once per worker; more get 429 with Retry-After.")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True, help="Request body limit (413 above).")
@click.option("--max-files", type=int, default=16, show_default=True, help="Images per request (413 above).")
@click.option("--max-pixels", type=int, default=40_000_000, show_default=True,
              help="Pixels per image; larger images are an error entry for that item.")
@click.option("--timeout-s", type=float, default=30.0, show_default=True,
              help="Per request; past it 504 and its queued images are dropped.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, each with its own model and limits.")
@click.option("--api-keys-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Bearer keys, one per line (also read: HUMANAES_API_KEYS, comma-separated).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser calls from this origin (repeatable).")
@click.option("--log-level", type=click.Choice(("critical", "error", "warning", "info", "debug")), default="info",
              show_default=True)
def serve_command(
    model: str | None, device: str, dtype: str, threads: int | None, host: str, port: int, max_batch: int,
    max_wait_ms: float, max_queue: int, max_upload_mb: float, max_files: int, max_pixels: int, timeout_s: float,
    workers: int, api_keys_file: Path | None, cors_origins: tuple[str, ...], log_level: str,
) -> None:
    """Serve scores over HTTP: POST /v1/score, GET /v1/models, /healthz, /readyz, /metrics, a web page at /.

    Limits are per worker. SIGTERM (or Ctrl-C) stops accepting connections, finishes the requests
    in progress and the queued images, then exits. Logs carry no image bytes, names or scores.
    """
    # Without the serve extra these imports fail; the CLI group names the extra to install.
    import uvicorn

    from humanaes.serve.app import create_app
    from humanaes.serve.settings import ServeSettings, load_api_keys

    settings = ServeSettings(
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_upload_mb=max_upload_mb,
        max_files=max_files, timeout_s=timeout_s, max_pixels=max_pixels,
        api_keys=load_api_keys(api_keys_file), cors_origins=tuple(cors_origins),
    )
    load_options: dict[str, object] = {"device": device.lower(), "dtype": dtype.lower()}
    if threads is not None:
        load_options["threads"] = threads
    click.echo(
        f"humanaes serve: http://{host}:{port}/ ({workers} worker{'s' if workers > 1 else ''}, model "
        f"{model or 'humanaes-mini (bundled)'}, API keys {'on' if settings.api_keys else 'off'})", err=True,
    )
    # In-flight requests may take up to timeout_s; give them that long to finish on SIGTERM.
    common: dict[str, Any] = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(timeout_s) + 5)
    with _DrainSignals() as received:
        if workers == 1:
            uvicorn.run(create_app(settings=settings, model=model, load_options=load_options), **common)
        else:
            _run_workers(uvicorn, settings, model, load_options, workers, common)
    if received and received[-1] == signal.SIGINT:
        sys.exit(130)  # interrupted, as `humanaes score` reports it; SIGTERM is a normal stop: 0


class _DrainSignals:
    """uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the previous handler; with
    the default handlers the process would die by the signal after a clean drain. Record it
    instead, so a drained stop exits 0 (SIGTERM) or 130 (Ctrl-C)."""

    def __enter__(self) -> list[int]:
        self.received: list[int] = []
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
        return self.received

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _run_workers(uvicorn: Any, settings: Any, model: str | None, load_options: dict[str, object], workers: int,
                 common: dict[str, Any]) -> None:
    from humanaes.serve.app import MODEL_ENV, SETTINGS_ENV
    from humanaes.serve.metrics import MULTIPROC_ENV

    # Several workers: uvicorn imports the app in each process; hand the settings over in the
    # environment, and switch prometheus-client to multiprocess mode so /metrics sums all workers.
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="humanaes-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    os.environ[SETTINGS_ENV] = settings.to_json()
    os.environ[MODEL_ENV] = json.dumps({"model": model, "load_options": load_options})
    try:
        uvicorn.run("humanaes.serve.app:worker_app", factory=True, workers=workers, **common)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


COMMANDS = [serve_command]
