"""The HTTP scoring service: a FastAPI app from `create_app(...)`.

Routes: `POST /v1/score`, `GET /v1/models`, `GET /healthz`, `GET /readyz`, `GET /metrics`, the
web page at `/` (assets under `/static`), the OpenAPI schema at `/openapi.json`.

Each request to `/v1/score` goes: API key (401) -> model loaded (503) -> admission (429 at once
when `max_queue` requests are already in) -> declared length (413 before reading) -> content type
(415) -> body read with the byte limit and the deadline (413 / 408) -> mode, options, image count
(422 / 413) -> the micro-batcher -> results (504 past the deadline, its queued images dropped).
Images are only ever bytes sent in the request: the server never fetches URLs or opens paths.
Logs carry no image bytes, names or scores.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from humanaes.errors import HumanAesError
from humanaes.options import describe_options, options_json_schema, parse_options
from humanaes.schema import DIMENSIONS, LEVEL_CUT_POINTS, LEVELS, SCORE_MODES
from humanaes.serve.batcher import BatcherClosed, MicroBatcher
from humanaes.serve.metrics import ServiceMetrics
from humanaes.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

_FORM_FIELD_LIMIT = 64 * 1024  # a mode or option value is short text
_MAX_NAME = 255


class RequestRefused(Exception):
    """A request the service answers with a 4xx/5xx status and a one-line reason."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


class _BodyTooLarge(Exception):
    pass


def keys_match(given: str, keys: tuple[str, ...]) -> bool:
    """Whether `given` is one of `keys`, comparing against every key in constant time (no early
    exit, so the time taken says nothing about which key, or how much of one, matched)."""
    given_bytes = given.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return found


class ServiceState:
    """What one worker holds: settings, metrics, the scorer and its batcher once loaded."""

    def __init__(self, settings: ServeSettings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.scorer: Any = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.admitted = 0
        self.batch_seconds = 0.0  # running mean of model time per batch (Retry-After estimates)

    def on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)
        self.batch_seconds = seconds if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * seconds

    async def start(self, scorer: Any) -> None:
        batcher = MicroBatcher(
            scorer, max_batch=self.settings.max_batch, max_wait_ms=self.settings.max_wait_ms, on_batch=self.on_batch
        )
        await batcher.start()
        self.scorer, self.batcher = scorer, batcher

    def retry_after(self) -> str:
        """Seconds until the queue has likely moved on: its batches times the model time per batch."""
        depth = self.batcher.depth if self.batcher is not None else 0
        batches = math.ceil(max(depth, 1) / self.settings.max_batch)
        return str(max(1, math.ceil(batches * self.batch_seconds)))


def create_app(
    scorer: Any = None,
    *,
    settings: ServeSettings | None = None,
    model: str | None = None,
    load_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The scoring service as an ASGI app.

    Pass a loaded `scorer` (any humanaes BaseScorer), or leave it None to load `model` (None =
    the bundled model) with `humanaes.load(model, **load_options)` in the background when the app
    starts; `/readyz` turns 200 once it is loaded. Mount it in your own app or run it under any
    ASGI server; the model runs on one thread per app, fed by a micro-batcher.
    """
    settings = settings or ServeSettings()
    state = ServiceState(settings, ServiceMetrics())
    load_options = dict(load_options or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task | None = None
        if scorer is not None:
            await state.start(scorer)
        else:
            loader = asyncio.create_task(_load_in_background(state, model, load_options))
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            if state.batcher is not None:
                await state.batcher.close()  # drains: queued work is finished, not dropped

    app = FastAPI(
        title="humanaes scoring service",
        version=_version(),
        description="Human image aesthetic scores over HTTP (HumanAesExpert and the bundled humanaes-mini).",
        lifespan=lifespan,
    )
    app.state.humanaes = state
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_StatusMetrics, metrics=state.metrics)
    _add_routes(app, state)
    static = resources.files("humanaes.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _version() -> str:
    from humanaes import __version__

    return __version__


async def _load_in_background(state: ServiceState, model: str | None, load_options: dict[str, Any]) -> None:
    def load() -> Any:
        import humanaes

        return humanaes.load(model, **load_options)  # a "threads" option forces that many CPU threads

    try:
        loaded = await asyncio.get_running_loop().run_in_executor(None, load)
    except HumanAesError as exc:
        state.load_error = str(exc)
        logger.error("model could not be loaded: %s", exc)
        return
    except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process keeps answering /healthz
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.exception("model could not be loaded")
        return
    await state.start(loaded)
    logger.info("model %s loaded; ready", getattr(loaded, "name", "?"))


class _StatusMetrics:
    """Pure ASGI middleware counting responses by status (and timing /v1/score); unlike
    BaseHTTPMiddleware it leaves the request's receive channel untouched (streamed bodies,
    disconnect detection)."""

    def __init__(self, app: Any, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = "499"  # until a response starts: the client left

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(status).inc()
            if scope.get("path") == "/v1/score":
                self.metrics.latency.labels(status).observe(time.perf_counter() - start)


def _refusal(exc: RequestRefused) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def _authorize(state: ServiceState, request: Request) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestRefused(401, "missing API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
    if not keys_match(token.strip(), keys):
        raise RequestRefused(401, "invalid API key", {"WWW-Authenticate": "Bearer"})


def _ready_scorer(state: ServiceState) -> Any:
    if state.batcher is None:
        if state.load_error:
            raise RequestRefused(503, f"the model failed to load: {state.load_error}")
        raise RequestRefused(503, "the model is still loading; retry shortly", {"Retry-After": "5"})
    return state.scorer


def _model_info(state: ServiceState) -> dict[str, Any]:
    scorer = state.scorer
    info = scorer.describe()
    modes = list(scorer.supported_modes)
    has_expert = any(m in modes for m in ("expert", "metavoter", "annotate"))
    bounds = (0.0, *LEVEL_CUT_POINTS, 1.0)
    return {
        "name": scorer.name,
        "kind": info.get("kind", "scorer"),  # each family names its kind in describe()
        "description": info.get("description", ""),
        "modes": modes,
        "default_mode": scorer.default_mode,
        "options": describe_options(scorer.options_class, client_only=True),
        "options_schema": options_json_schema(scorer.options_class, client_only=True),
        "score_scale": {"min": 0.0, "max": 1.0},
        "levels": [{"name": lv, "from": lo, "to": hi} for lv, lo, hi in zip(LEVELS, bounds, bounds[1:])],
        "dimensions": list(DIMENSIONS) if has_expert else [],
        "annotation": "annotate" in modes,
        "licence": info.get("licence") or "not stated by the checkpoint; see its model card",
    }


def _limits(settings: ServeSettings) -> dict[str, Any]:
    return {
        "max_files": settings.max_files, "max_upload_mb": settings.max_upload_mb, "timeout_s": settings.timeout_s,
        "max_batch": settings.max_batch, "max_pixels": settings.max_pixels,
    }


_SCORE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "mode": {"type": "string", "enum": list(SCORE_MODES)},
                },
                "additionalProperties": {"type": "string", "description": "a model option (see /v1/models)"},
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["data"],
                            "properties": {"name": {"type": "string"}, "data": {"type": "string", "format": "byte"}},
                        },
                    },
                    "mode": {"type": "string", "enum": list(SCORE_MODES)},
                    "options": {"type": "object", "description": "the model's options (see /v1/models)"},
                },
            }
        },
    },
}

_SCORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "one result per image, in order; a bad image is an entry with `error`"},
    401: {"description": "missing or invalid API key"},
    408: {"description": "the request body did not arrive in time"},
    413: {"description": "body over the upload limit, or more images than allowed"},
    415: {"description": "not multipart/form-data or application/json"},
    422: {"description": "malformed request, unknown mode or option, or no usable image"},
    429: {"description": "queue full; retry after `Retry-After` seconds"},
    503: {"description": "model not loaded yet, or shutting down"},
    504: {"description": "not scored within the time limit; its queued work was dropped"},
}


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    settings = state.settings
    static = resources.files("humanaes.serve").joinpath("static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded", responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        if state.batcher is not None:
            return JSONResponse({"status": "ready", "model": state.scorer.name})
        status = "failed" if state.load_error else "loading"
        return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        return Response(state.metrics.exposition(), media_type=state.metrics.content_type)

    @app.get("/v1/models", summary="The loaded model: modes, options, score scale, levels, licence",
             responses={401: {"description": "missing or invalid API key"}, 503: {"description": "not loaded yet"}})
    async def models(request: Request) -> JSONResponse:
        try:
            _authorize(state, request)
            _ready_scorer(state)
        except RequestRefused as exc:
            return _refusal(exc)
        return JSONResponse({"models": [_model_info(state)], "limits": _limits(settings)})

    @app.post("/v1/score", summary="Score images (multipart `files`, or JSON with base64 `images`)",
              openapi_extra={"requestBody": _SCORE_BODY}, responses=_SCORE_RESPONSES)
    async def score(request: Request) -> Response:
        start = time.monotonic()
        try:
            _authorize(state, request)
            _ready_scorer(state)
            if state.admitted >= settings.max_queue:
                raise RequestRefused(
                    429, f"queue full ({settings.max_queue} requests in progress); retry later",
                    {"Retry-After": state.retry_after()},
                )
        except RequestRefused as exc:
            return _refusal(exc)
        state.admitted += 1
        state.metrics.admitted.inc()
        try:
            return await _score(state, request, start)
        except RequestRefused as exc:
            return _refusal(exc)
        finally:
            state.admitted -= 1
            state.metrics.admitted.dec()
            if state.batcher is not None:
                state.metrics.queue_depth.set(state.batcher.depth)


# -- /v1/score -------------------------------------------------------------------------------------


async def _score(state: ServiceState, request: Request, start: float) -> Response:
    settings, scorer, batcher = state.settings, state.scorer, state.batcher
    assert batcher is not None
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRefused(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise RequestRefused(413, f"request body of {int(declared)} bytes is over the {settings.max_upload_mb:g} MB limit")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise RequestRefused(
            415, f"content type {content_type or 'none'!r} not accepted; send multipart/form-data (field 'files') "
            "or application/json ({'images': [{'name', 'data': base64}]})",
        )
    deadline = start + settings.timeout_s
    parse = _parse_multipart if content_type == "multipart/form-data" else _parse_json
    try:
        images, mode, raw_options, from_text = await asyncio.wait_for(
            parse(request, settings), max(deadline - time.monotonic(), 0.001)
        )
    except asyncio.TimeoutError:
        raise RequestRefused(408, f"request body not received within {settings.timeout_s:g} s") from None
    except _BodyTooLarge:
        raise RequestRefused(413, f"request body is over the {settings.max_upload_mb:g} MB limit") from None
    except ClientDisconnect:
        return Response(status_code=499)  # nobody is listening; the status only shows in metrics
    if not images:
        raise RequestRefused(422, "no images in the request: send them as multipart field 'files' or JSON 'images'")
    if len(images) > settings.max_files:
        raise RequestRefused(413, f"{len(images)} images in one request; the limit is {settings.max_files}")
    try:
        mode = scorer.check_mode(mode)
        options = parse_options(
            scorer.options_class, raw_options,
            defaults={"apply_exif": scorer.apply_exif, "max_pixels": settings.max_pixels},
            owner=f"model {scorer.name!r}", from_text=from_text, client_only=True,
        )
        options.check_mode(mode)
        futures = batcher.submit(images, mode, options)
    except BatcherClosed as exc:
        raise RequestRefused(503, str(exc)) from None
    except HumanAesError as exc:
        raise RequestRefused(422, str(exc)) from None

    waiter = asyncio.ensure_future(asyncio.gather(*futures))
    disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {waiter, disconnect}, timeout=max(deadline - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        disconnect.cancel()
        for f in futures:
            f.cancel()  # drops images still queued; no-op for scored ones
    if waiter not in done:
        waiter.cancel()
        if disconnect in done:
            return Response(status_code=499)
        raise RequestRefused(504, f"not scored within {settings.timeout_s:g} s; the request's queued images were dropped")
    try:
        results = waiter.result()
    except Exception as exc:  # noqa: BLE001 - the model failed on the whole batch
        raise RequestRefused(500, f"scoring failed ({type(exc).__name__}); the service keeps running") from None
    errors = sum(1 for r in results if r.error)
    state.metrics.images.labels("ok").inc(len(results) - errors)
    state.metrics.images.labels("error").inc(errors)
    payload = {"model": scorer.name, "mode": mode, "results": [r.to_dict() for r in results]}
    if errors == len(results):
        first = results[0].error
        more = f" (and {errors - 1} more)" if errors > 1 else ""
        return JSONResponse({"detail": f"no usable image in the request: {first}{more}", **payload}, status_code=422)
    return JSONResponse(payload)


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is fully read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _limited_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _BodyTooLarge
        yield chunk


def _image_name(name: str | None, index: int) -> str:
    name = (name or "").strip()
    return name[:_MAX_NAME] if name else f"image-{index}"


async def _parse_multipart(request: Request, settings: ServeSettings) -> tuple[list[tuple[str, bytes]], str | None, dict[str, Any], bool]:
    parser = MultiPartParser(
        Headers(raw=request.headers.raw), _limited_body(request, settings.max_upload_bytes),
        max_files=settings.max_files, max_fields=64, max_part_size=_FORM_FIELD_LIMIT,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise RequestRefused(413, f"more than {settings.max_files} images in one request") from None
        raise RequestRefused(422, f"malformed multipart body: {exc.message}") from None
    images: list[tuple[str, bytes]] = []
    mode: str | None = None
    options: dict[str, Any] = {}
    try:
        for field_name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if field_name != "files":
                    raise RequestRefused(422, f"unexpected file field {field_name!r}; send images in the field 'files'")
                images.append((_image_name(value.filename, len(images)), await value.read()))
            elif field_name == "mode":
                mode = value.strip().lower()
            elif field_name == "files":
                raise RequestRefused(422, "field 'files' must carry files (multipart parts with a filename), not text")
            elif field_name in options:
                raise RequestRefused(422, f"option {field_name!r} given twice")
            else:
                options[field_name] = value
    finally:
        await form.close()
    return images, mode, options, True


async def _parse_json(request: Request, settings: ServeSettings) -> tuple[list[tuple[str, bytes]], str | None, dict[str, Any], bool]:
    body = bytearray()
    async for chunk in _limited_body(request, settings.max_upload_bytes):
        body.extend(chunk)
    if not body:
        raise RequestRefused(422, "empty request body; expected JSON {'images': [{'name': ..., 'data': <base64>}]}")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRefused(422, f"request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestRefused(422, "the JSON body must be an object with 'images'")
    unknown = sorted(set(payload) - {"images", "mode", "options"})
    if unknown:
        raise RequestRefused(422, f"unknown field(s) {', '.join(map(repr, unknown))}; expected images, mode, options")
    items = payload.get("images")
    if not isinstance(items, list):
        raise RequestRefused(422, "'images' must be a list of {'name': ..., 'data': <base64>}")
    if len(items) > settings.max_files:
        raise RequestRefused(413, f"{len(items)} images in one request; the limit is {settings.max_files}")
    mode = payload.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise RequestRefused(422, f"'mode' must be a string, got {type(mode).__name__}")
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise RequestRefused(422, "'options' must be an object of option names to values")
    images = []
    for index, item in enumerate(items):
        where = f"images[{index}]"
        if not isinstance(item, dict):
            raise RequestRefused(422, f"{where} must be an object {{'name': ..., 'data': <base64>}}")
        if "url" in item or "path" in item:
            raise RequestRefused(422, f"{where}: the server never fetches URLs or opens paths; send the image bytes as base64 in 'data'")
        name, data = item.get("name"), item.get("data")
        if name is not None and not isinstance(name, str):
            raise RequestRefused(422, f"{where}: 'name' must be a string")
        if not isinstance(data, str):
            raise RequestRefused(422, f"{where}: 'data' must be a base64 string")
        label = _image_name(name, index)
        if data.startswith("data:") and "," in data:
            data = data.split(",", 1)[1]  # a data: URL's payload (still bytes sent by the client)
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRefused(422, f"{where} ({label!r}): 'data' is not valid base64") from None
        images.append((label, decoded))
    return images, (mode.strip().lower() if mode else None), options, False


__all__ = ["RequestRefused", "ServiceState", "create_app", "keys_match"]


# -- workers started by `humanaes serve --workers N` ---------------------------------------------

SETTINGS_ENV = "HUMANAES_SERVE_SETTINGS"
MODEL_ENV = "HUMANAES_SERVE_MODEL"


def worker_app() -> FastAPI:
    """App factory for uvicorn worker processes: settings and model come from the environment
    the `humanaes serve` command set (each worker loads its own model)."""
    import os

    settings = ServeSettings.from_json(os.environ[SETTINGS_ENV])
    spec = json.loads(os.environ.get(MODEL_ENV, "{}"))
    return create_app(settings=settings, model=spec.get("model"), load_options=spec.get("load_options") or {})
