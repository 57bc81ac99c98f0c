"""`humanaes serve`: real HTTP requests (httpx, raw sockets) against the app running in uvicorn.

The model is the real bundled humanaes-mini; where a test needs model time to pass (timeouts,
queue limits, disconnects) it wraps the scorer so each batch also sleeps, and records the batch
sizes and image names the model was given (micro-batching and dropped work are checked from that
record, not from timings).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from humanaes.models.mini import BundledScorer  # noqa: E402
from humanaes.serve import ServeSettings, create_app  # noqa: E402
from humanaes.serve import app as serve_app  # noqa: E402
from humanaes.serve.settings import load_api_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


class Recording:
    """The real scorer, plus a record of what the model was given and an optional delay per batch."""

    def __init__(self, scorer: Any, delay: float = 0.0):
        self._scorer = scorer
        self.delay = delay
        self.batches: list[int] = []
        self.names: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def iter_score(self, images: Any, *, names: Any = None, **kwargs: Any) -> Any:
        images = list(images)
        self.batches.append(len(images))
        self.names.extend(names or [])
        time.sleep(self.delay)
        return self._scorer.iter_score(images, names=names, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Run `app` in uvicorn on a loopback port in a thread; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(scorer: Any, **limits: Any) -> Any:
    return running(create_app(scorer, settings=ServeSettings(**limits)))


def jpeg(seed: int, size: tuple[int, int] = (320, 400)) -> bytes:
    """A distinct real photo per seed: a crop of the shipped portrait at a seed-dependent offset."""
    base = Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB")
    box = (seed * 7 % 120, seed * 11 % 110, seed * 7 % 120 + 380, seed * 11 % 110 + 400)
    buf = io.BytesIO()
    base.crop(box).resize(size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def raw_request(url: str, head: bytes, body: bytes = b"", *, read: bool = True, timeout: float = 10) -> tuple[socket.socket, bytes]:
    """Send bytes over a plain socket (for what httpx will not do: lie about lengths, stall, leave)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(head + body)
    data = b""
    if read:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return sock, data


# -- results ------------------------------------------------------------------------------------------


def test_multipart_results_equal_the_api_in_order_with_item_errors(bundled: BundledScorer) -> None:
    photo, portrait = (EXAMPLES / "grace_hopper.jpg").read_bytes(), (EXAMPLES / "astronaut.png").read_bytes()
    expected = bundled.score([photo, portrait], batch_size=1)
    with serve(bundled) as url:
        r = httpx.post(f"{url}/v1/score", files=files(("hopper.jpg", photo), ("notes.txt", b"just text\n"), ("astro.png", portrait)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "humanaes-mini" and body["mode"] == "fast"
    results = body["results"]
    assert [x["image"] for x in results] == ["hopper.jpg", "notes.txt", "astro.png"]
    assert results[1]["error"] == "notes.txt: not an image: the file looks like text" and results[1]["overall"] is None
    for got, want in zip([results[0], results[2]], expected):
        assert got["overall"] == pytest.approx(want.overall, abs=1e-5)
        assert got["level"] == want.level and got["person_found"] == want.person_found
        assert set(got) == set(want.to_dict())  # the API's result schema


def test_json_base64_and_options(bundled: BundledScorer) -> None:
    photo = jpeg(3)
    want = bundled.score(photo, use_face=False)[0]
    payload = {"images": [{"name": "p.jpg", "data": base64.b64encode(photo).decode()}], "options": {"use_face": False}}
    with serve(bundled) as url:
        r = httpx.post(f"{url}/v1/score", json=payload)
        form = httpx.post(f"{url}/v1/score", files=files(("p.jpg", photo)), data={"use_face": "false", "mode": "fast"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["overall"] == pytest.approx(want.overall, abs=1e-5)
    assert r.json()["results"][0]["person_found"] is False
    assert form.json()["results"][0]["overall"] == pytest.approx(want.overall, abs=1e-5)


def test_bad_requests_get_precise_4xx(bundled: BundledScorer) -> None:
    good = base64.b64encode(jpeg(1)).decode()
    cases = [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type 'text/plain'"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 422, "empty request body"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        ({"json": {"images": [{"name": "x.jpg", "data": "@@@not base64@@@"}]}}, 422, "images[0] ('x.jpg'): 'data' is not valid base64"),
        ({"json": {"images": [{"url": "http://127.0.0.1:1/secret.jpg"}]}}, 422, "never fetches URLs"),
        ({"json": {"images": [{"data": "/etc/hostname"}]}}, 422, "not valid base64"),  # a path is not image bytes
        ({"json": {"images": []}}, 422, "no images in the request"),
        ({"json": {"images": [{"data": good}], "mode": "annotate"}}, 422, "mode 'annotate' is not available"),
        ({"json": {"images": [{"data": good}], "mode": "best"}}, 422, "unknown mode 'best'"),
        ({"json": {"images": [{"data": good}], "options": {"max_tiles": 3}}}, 422, "option 'max_tiles' not available"),
        ({"json": {"images": [{"data": good}], "options": {"max_pixels": 10**12}}}, 422, "option 'max_pixels' not available"),
        ({"json": {"images": [{"data": good}], "options": {"use_face": "maybe"}}}, 422, "'use_face' must be true or false"),
        ({"files": files(("a.jpg", b"x")), "data": {"use_face": "maybe"}}, 422, "'use_face' must be true or false"),
        ({"files": [("photo", ("a.jpg", b"x", "image/jpeg"))]}, 422, "unexpected file field 'photo'"),
        ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 422, "malformed multipart"),
    ]
    with serve(bundled) as url:
        for kwargs, status, message in cases:
            r = httpx.post(f"{url}/v1/score", **kwargs)
            assert r.status_code == status, (kwargs, r.text)
            detail = r.json()["detail"]
            assert message in detail and "\n" not in detail, (message, detail)
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving everyone


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb: tiny file, huge image)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_bombs_and_huge_images_are_item_errors_and_unusable_requests_422(bundled: BundledScorer) -> None:
    big = io.BytesIO()
    Image.new("RGB", (1500, 1000), (120, 90, 80)).save(big, format="PNG")  # 1.5 MP over a 1 MP limit
    with serve(bundled, max_pixels=1_000_000) as url:
        r = httpx.post(f"{url}/v1/score", files=files(
            ("bomb.png", _png_header_claiming(100_000, 100_000)), ("ok.jpg", jpeg(2)), ("big.png", big.getvalue()),
            ("cut.jpg", jpeg(4)[:300]),
        ))
        assert r.status_code == 200, r.text
        bomb, ok, huge, cut = r.json()["results"]
        assert "bomb.png" in bomb["error"] and "10000000000" in bomb["error"].replace(",", "")
        assert ok["error"] is None and ok["overall"] is not None
        assert "big.png" in huge["error"] and "1500000" in huge["error"].replace(",", "")
        assert "cut.jpg" in cut["error"]
        only_bad = httpx.post(f"{url}/v1/score", files=files(("bomb.png", _png_header_claiming(100_000, 100_000))))
    assert only_bad.status_code == 422
    assert only_bad.json()["detail"].startswith("no usable image in the request: bomb.png")
    assert only_bad.json()["results"][0]["error"]


# -- limits ----------------------------------------------------------------------------------------------


def test_queue_full_is_429_at_once_with_retry_after(bundled: BundledScorer) -> None:
    slow = Recording(bundled, delay=1.0)
    with serve(slow, max_queue=2, max_batch=1) as url, ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(httpx.post, f"{url}/v1/score", files=files((f"{i}.jpg", jpeg(i))), timeout=30) for i in range(2)]
        time.sleep(0.3)  # both admitted
        start = time.monotonic()
        refused = httpx.post(f"{url}/v1/score", files=files(("late.jpg", jpeg(9))))
        elapsed = time.monotonic() - start
        assert [f.result().status_code for f in busy] == [200, 200]
    assert refused.status_code == 429 and "queue full" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert elapsed < 0.5  # answered at once, not after the queue moved
    assert "late.jpg" not in slow.names


def test_body_over_limit_is_413_without_reading_it(bundled: BundledScorer) -> None:
    with serve(bundled, max_upload_mb=0.5) as url:
        # Declared too long: answered before a single body byte is sent.
        sock, head = raw_request(url, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                                      b"boundary=b\r\nContent-Length: 104857600\r\n\r\n")
        sock.close()
        assert head.startswith(b"HTTP/1.1 413"), head
        # Chunked (no length): refused once the limit is crossed, with most of the 50 MB never sent.
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n" + b"\0" * 65536
        sent, answer = 0, b""
        sock.settimeout(0.05)
        try:
            while sent < 50 * 1024 * 1024 and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    answer = sock.recv(4096)
                except socket.timeout:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        answer = answer or sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert sent < 3 * 1024 * 1024  # the server stopped reading right after 0.5 MB
        assert httpx.post(f"{url}/v1/score", files=files(("ok.jpg", jpeg(1)))).status_code == 200


def test_too_many_files_is_413(bundled: BundledScorer) -> None:
    slow = Recording(bundled)
    with serve(slow, max_files=3) as url:
        r = httpx.post(f"{url}/v1/score", files=files(*[(f"{i}.jpg", b"x") for i in range(4)]))
        assert r.status_code == 413 and "more than 3 images" in r.json()["detail"]
        start = time.monotonic()
        swarm = httpx.post(f"{url}/v1/score", files=files(*[(f"{i}.jpg", b"") for i in range(5000)]))
        assert swarm.status_code == 413 and time.monotonic() - start < 5
        many = {"images": [{"data": ""} for _ in range(4)]}
        assert httpx.post(f"{url}/v1/score", json=many).status_code == 413
    assert slow.batches == []  # nothing reached the model


def test_timeout_is_504_and_drops_queued_work(bundled: BundledScorer) -> None:
    slow = Recording(bundled, delay=0.8)
    with serve(slow, timeout_s=0.5, max_batch=1) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/score", files=files(("first.jpg", jpeg(1))), timeout=10)
        time.sleep(0.15)  # first is in the model now
        second = pool.submit(httpx.post, f"{url}/v1/score", files=files(("second.jpg", jpeg(2))), timeout=10)
        assert first.result().status_code == 504 and second.result().status_code == 504
        assert "queued images were dropped" in second.result().json()["detail"]
        time.sleep(1.0)  # the model finishes "first"; "second" must not follow it
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert slow.names == ["first.jpg"]


def test_disconnected_client_holds_no_model_slot(bundled: BundledScorer) -> None:
    slow = Recording(bundled, delay=0.6)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"gone.jpg\"\r\n\r\n" + jpeg(5) + b"\r\n--b--\r\n")
    head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with serve(slow, max_batch=1) as url, ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, f"{url}/v1/score", files=files(("holder.jpg", jpeg(1))), timeout=10)
        time.sleep(0.15)
        sock, _ = raw_request(url, head, body, read=False)
        time.sleep(0.2)
        sock.close()  # leaves while queued
        assert holder.result().status_code == 200
        time.sleep(1.0)
        metrics = httpx.get(f"{url}/metrics").text
    assert slow.names == ["holder.jpg"]
    assert 'humanaes_requests_total{status="499"} 1.0' in metrics


def test_slow_client_gets_408_and_blocks_nobody(bundled: BundledScorer) -> None:
    with serve(bundled, timeout_s=1.0) as url:
        head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 5000\r\n\r\n")
        sock, _ = raw_request(url, head, b"--b\r\n", read=False)  # then nothing more
        start = time.monotonic()
        ok = httpx.post(f"{url}/v1/score", files=files(("fast.jpg", jpeg(1))))
        assert ok.status_code == 200 and time.monotonic() - start < 1.0  # not waiting behind the slow one
        sock.settimeout(5)
        answer = sock.recv(4096)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"not received within 1 s" in answer


def test_api_keys_required_and_compared_in_constant_time(bundled: BundledScorer, monkeypatch, tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nk-file\n")
    keys = load_api_keys(keys_file, environ={"HUMANAES_API_KEYS": "k-env1, k-env2"})
    assert keys == ("k-env1", "k-env2", "k-file")
    with serve(bundled, api_keys=keys) as url:
        photo = files(("a.jpg", jpeg(1)))
        assert httpx.post(f"{url}/v1/score", files=photo).status_code == 401
        wrong = httpx.post(f"{url}/v1/score", files=photo, headers={"Authorization": "Bearer k-env"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid API key"
        assert wrong.headers["WWW-Authenticate"] == "Bearer"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.post(f"{url}/v1/score", files=photo, headers={"Authorization": "Bearer k-file"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
    compared: list[bytes] = []
    real = serve_app.hmac.compare_digest
    monkeypatch.setattr(serve_app.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    assert serve_app.keys_match("k-env1", keys) is True
    assert compared == [b"k-env1", b"k-env2", b"k-file"]  # every key compared, even after a match


# -- batching, metrics, models, readiness, logs ----------------------------------------------------------


def test_concurrent_requests_share_model_batches_and_get_their_own_answers(bundled: BundledScorer) -> None:
    photos = {f"p{i}.jpg": jpeg(i) for i in range(8)}
    want = {name: r.overall for name, r in zip(photos, bundled.score(list(photos.values()), batch_size=1))}
    model = Recording(bundled, delay=0.3)
    with serve(model, max_batch=4, max_wait_ms=200) as url, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: httpx.post(f"{url}/v1/score", files=files((n, photos[n])), timeout=30), photos))
        metrics = httpx.get(f"{url}/metrics").text
    assert [a.status_code for a in answers] == [200] * 8
    for name, answer in zip(photos, answers):
        (result,) = answer.json()["results"]
        assert result["image"] == name and result["overall"] == pytest.approx(want[name], abs=1e-5)
    assert sum(model.batches) == 8 and max(model.batches) <= 4
    assert len(model.batches) <= 4, model.batches  # gathered: 8 one-image requests, at most 4 model calls
    assert "humanaes_batch_size_count %d.0" % len(model.batches) in metrics
    assert 'humanaes_images_scored_total{outcome="ok"} 8.0' in metrics


def test_metrics_models_and_readiness(bundled: BundledScorer) -> None:
    with serve(bundled) as url:
        httpx.post(f"{url}/v1/score", files=files(("a.jpg", jpeg(1)), ("b.txt", b"text")))
        httpx.post(f"{url}/v1/score", content=b"x", headers={"content-type": "text/plain"})
        metrics = httpx.get(f"{url}/metrics")
        models = httpx.get(f"{url}/v1/models").json()
        openapi = httpx.get(f"{url}/openapi.json").json()
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for line in ('humanaes_requests_total{status="200"} 1.0', 'humanaes_requests_total{status="415"} 1.0',
                 'humanaes_images_scored_total{outcome="error"} 1.0', "humanaes_queue_depth 0.0",
                 'humanaes_request_latency_seconds_count{status="200"} 1.0', "humanaes_batch_size_bucket{le=\"1.0\"} 0.0"):
        assert line in text, line
    (info,) = models["models"]
    assert info["name"] == "humanaes-mini" and info["modes"] == list(bundled.supported_modes)
    assert [o["name"] for o in info["options"]] == ["apply_exif", "use_face", "tta_flip"]
    assert info["dimensions"] == [] and info["annotation"] is False and "MEBeauty" in info["licence"]
    assert info["levels"][0] == {"name": "bad", "from": 0.0, "to": 0.2} and info["score_scale"] == {"min": 0.0, "max": 1.0}
    assert models["limits"]["max_files"] == 16
    assert "multipart/form-data" in openapi["paths"]["/v1/score"]["post"]["requestBody"]["content"]


def test_readyz_waits_for_the_model_and_reports_a_failed_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import humanaes
    from humanaes.errors import ModelNotFoundError

    def missing(name: Any, **kwargs: Any) -> Any:  # what load() says about a missing folder, without its imports
        raise ModelNotFoundError(f"model {name!r} not found: it is not a folder, a preset, a bundled model or a hub id")

    with monkeypatch.context() as patch:
        patch.setattr(humanaes, "load", missing)
        failing = create_app(model=str(tmp_path / "no-such-model"), load_options={"device": "cpu"})
        with running(failing) as url:
            deadline = time.monotonic() + 20
            while (r := httpx.get(f"{url}/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert r.status_code == 503 and r.json()["status"] == "failed" and "no-such-model" in r.json()["detail"]
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            refused = httpx.post(f"{url}/v1/score", files=files(("a.jpg", b"x")))
            assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
    with running(create_app(load_options={"device": "cpu", "dtype": "float32"})) as url:
        seen = []
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{url}/readyz").status_code) != 200 and time.monotonic() < deadline:
            seen.append(status)
            time.sleep(0.05)
        assert status == 200 and set(seen) <= {503}
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "model": "humanaes-mini"}


def test_logs_carry_no_names_bytes_or_scores(bundled: BundledScorer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serve(bundled) as url:
        r = httpx.post(f"{url}/v1/score", files=files(("secret-holiday.jpg", jpeg(6)), ("private.txt", b"diary")))
    score = r.json()["results"][0]["overall"]
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "model batch: 2 images" in logged  # the service does log, just not about the content
    assert "secret-holiday" not in logged and "private" not in logged and "diary" not in logged
    assert f"{score:.4f}"[:5] not in logged.replace("0.0", "")  # no score digits


def test_batcher_refuses_paths() -> None:
    import asyncio

    from humanaes.serve.batcher import MicroBatcher

    async def run() -> None:
        batcher = MicroBatcher(Recording(None))
        await batcher.start()
        try:
            with pytest.raises(TypeError, match="takes encoded bytes"):
                batcher.submit([("x", "/etc/passwd")], "fast", None)  # type: ignore[list-item]
        finally:
            await batcher.close()

    asyncio.run(run())


# -- the real command: SIGTERM drains -------------------------------------------------------------------


@pytest.mark.slow  # a fresh process imports torch and loads the model: 10-40 s on a busy 2-core machine
def test_sigterm_finishes_accepted_requests_then_exits(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "humanaes.cli", "serve", "--port", str(port), "--threads", "1", "--dtype", "float32",
         "--max-batch", "2", "--max-queue", "64"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        photos = [jpeg(i, (600, 700)) for i in range(12)]

        def post(i: int) -> tuple[int, float]:
            r = httpx.post(f"{url}/v1/score", files=files((f"{i}.jpg", photos[i])), timeout=60)
            return r.status_code, time.monotonic()

        with ThreadPoolExecutor(12) as pool:
            pending = [pool.submit(post, i) for i in range(12)]
            # SIGTERM once all twelve are admitted (a connection whose request has not arrived yet
            # is closed by the server on shutdown, like any not-yet-accepted one)
            while "humanaes_requests_in_progress 12.0" not in httpx.get(f"{url}/metrics").text:
                assert time.monotonic() < deadline + 30, "requests were not admitted"
                time.sleep(0.01)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in pending]
        assert [status for status, _ in answers] == [200] * 12  # every accepted request was answered
        assert max(t for _, t in answers) > signalled  # some were still queued when the signal came
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert "Finished server process" in log


# -- contract and browser ------------------------------------------------------------------------------


def test_openapi_fuzzing_finds_no_server_error(bundled: BundledScorer) -> None:
    """A bounded schemathesis run against the served OpenAPI schema: any 5xx fails."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    seen: dict[str, set[int]] = {}
    with serve(bundled, max_files=4, max_upload_mb=1) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /v1/score", "GET /v1/models", "GET /readyz", "GET /healthz"}
        for operation in operations:

            @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case: Any) -> None:
                response = case.call(base_url=url, timeout=30)
                seen.setdefault(operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

            check()
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert seen["POST /v1/score"] and max(seen["POST /v1/score"]) < 500


ARTIFACTS = ROOT / "test-artifacts"


@pytest.mark.slow  # starts a real browser
def test_web_page_in_a_real_browser(bundled: BundledScorer, tmp_path: Path) -> None:
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1400",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    photo = EXAMPLES / "grace_hopper.jpg"
    with serve(bundled) as url:
        api = httpx.post(f"{url}/v1/score", files=files((photo.name, photo.read_bytes()))).json()["results"][0]
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(ec.text_to_be_present_in_element((By.ID, "model-line"), "humanaes-mini"))
            note = browser.find_element(By.ID, "model-note")
            assert note.is_displayed() and "no twelve-dimension radar chart" in note.text
            browser.find_element(By.ID, "file-input").send_keys(str(photo))
            shown = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .score")))
            card = browser.find_element(By.CSS_SELECTOR, ".card")
            assert card.find_element(By.CSS_SELECTOR, ".name").text == photo.name
            assert float(shown.get_attribute("data-score")) == pytest.approx(api["overall"], abs=1e-6)
            assert shown.text == f"{api['overall']:.4f}"
            assert card.find_element(By.CSS_SELECTOR, ".level").text == api["level"]
            assert not card.find_elements(By.CSS_SELECTOR, "svg.radar")  # the bundled model has no dimensions
            ARTIFACTS.mkdir(exist_ok=True)
            for target in (tmp_path / "web-page.png", ARTIFACTS / "web-page.png"):
                assert browser.save_screenshot(str(target)) and target.stat().st_size > 10_000
            # A model with the twelve dimensions: the page draws its radar chart.
            from test_cli_score import PixelScorer  # a tiny real model (scores are functions of the pixels)

            with serve(PixelScorer()) as expert_url:
                browser.get(expert_url + "/")
                wait.until(ec.text_to_be_present_in_element((By.ID, "model-line"), "pixel-test"))
                assert not browser.find_element(By.ID, "model-note").is_displayed()
                Select(browser.find_element(By.ID, "mode")).select_by_value("expert")
                browser.find_element(By.ID, "file-input").send_keys(str(photo))
                radar = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".card svg.radar")))
                assert len(radar.find_elements(By.TAG_NAME, "text")) == 12
                for target in (tmp_path / "web-page-expert.png", ARTIFACTS / "web-page-expert.png"):
                    assert browser.save_screenshot(str(target))
        finally:
            browser.quit()


@pytest.mark.slow  # two worker processes each load the model
def test_two_workers_share_one_metrics_view(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "humanaes.cli", "serve", "--port", str(port), "--threads", "1", "--workers", "2",
         "--log-level", "warning"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 10 and time.monotonic() < deadline:  # both workers answer readyz (connections alternate)
            try:
                ready = ready + 1 if httpx.get(f"{url}/readyz").status_code == 200 else 0
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        photo = files(("a.jpg", jpeg(1)))
        statuses = [httpx.post(f"{url}/v1/score", files=photo).status_code for _ in range(6)]
        text = httpx.get(f"{url}/metrics").text
        assert statuses == [200] * 6
        assert 'humanaes_images_scored_total{outcome="ok"} 6.0' in text  # summed over the workers
        assert "humanaes_images_scored_created" not in text  # read from the multiprocess files, not one registry
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_cors_origin_allows_only_that_origin(bundled: BundledScorer) -> None:
    with serve(bundled, cors_origins=("https://app.example.org",)) as url:
        headers = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST"}
        allowed = httpx.options(f"{url}/v1/score", headers=headers)
        other = httpx.options(f"{url}/v1/score", headers={**headers, "Origin": "https://evil.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["--timeout-s", "0"], "--timeout-s must be more than 0"),
        (["--api-keys-file", "/nonexistent/keys"], "--api-keys-file /nonexistent/keys: cannot read it"),
    ],
)
def test_serve_command_rejects_bad_flags_before_starting(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from humanaes.cli import main

    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {lines[0].removeprefix('error: ')}"] and message in lines[0]


def test_a_humanaesexpert_model_over_http() -> None:
    """The other model family through the same service: its modes, typed options, dimensions."""
    import humanaes

    scorer = humanaes.load("humanaes-tiny", device="cpu", dtype="float32")  # random weights, real architecture
    photo = jpeg(3, (500, 300))
    want = scorer.score(photo, mode="metavoter", max_tiles=2)[0]
    with serve(scorer) as url:
        info = httpx.get(f"{url}/v1/models").json()["models"][0]
        r = httpx.post(f"{url}/v1/score", files=files(("p.jpg", photo)), data={"mode": "metavoter", "max_tiles": "2"})
        too_many = httpx.post(f"{url}/v1/score", files=files(("p.jpg", photo)), data={"max_tiles": "100"})
        # sampling settings in a mode that writes no annotation: refused at the door, not failed in the model
        sampled_fast = httpx.post(f"{url}/v1/score", files=files(("p.jpg", photo)), data={"mode": "fast", "do_sample": "true"})
    assert [o["name"] for o in info["options"]] == ["apply_exif", "max_tiles", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed"]
    assert len(info["dimensions"]) == 12 and info["annotation"] is True and "metavoter" in info["modes"]
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]
    assert got["overall"] == pytest.approx(want.overall, abs=1e-5)
    assert got["expert"] == pytest.approx(want.expert, abs=1e-5) and len(got["expert"]) == 12
    assert got["level_probs"] == pytest.approx(want.level_probs, abs=1e-5)
    assert too_many.status_code == 422 and "'max_tiles' must be an integer >= 1 and <= 64" in too_many.json()["detail"]
    assert sampled_fast.status_code == 422 and "only applies to the annotation" in sampled_fast.json()["detail"]
