"""`ila serve`: one model behind HTTP, with requests batched onto it, and a web page to try it.

    ila serve --checkpoint runs/demo --port 8000
    curl -F video=@clip.mp4 http://127.0.0.1:8000/predict          # what `ila predict clip.mp4 --json` prints

Routes: GET / (the web page: upload, top classes, a long video's timeline, the points picture), GET /health,
POST /predict (multipart field `video`; optional fields `topk`, `window`, `stride`), POST /points (the same upload;
the alignment points picture as PNG, for models with alignment maps; optional `block`). Every error is a 4xx (5xx for
a fault of the server) with one line of JSON, `{"error": "..."}`.

How a request runs: its body is read as it arrives (refused with 413 as soon as it passes the size limit, before
that when its Content-Length says so), within time limits (`make_server`: headers, an idle body, the whole upload);
the upload goes to a private temporary file (a fresh name in a folder only this process can read, deleted after the
request: nothing a request sends names a path on the server) and is decoded in the request's own thread by the
inference session's one loop (`InferenceSession.predict` / `.windows`); only the model forward goes to the
`Batcher`, whose single worker thread owns the model and runs the views of concurrent requests together, up to
`max_batch` clips or `max_wait_ms` after the first one arrived. The answer is what `ila predict --json` prints for
that video, with the upload's file name (its last component only) as `video`.

Built on Starlette (the ASGI toolkit FastAPI is built on: routing, a streaming request body, the multipart parser of
python-multipart) served by uvicorn; both are the optional extra `serve` and imported only when serving.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Sequence

import torch

from ila.data.annotations import VIDEO_EXTENSIONS
from ila.data.decode import VideoReadError
from ila.engine.precision import autocast
from ila.engine.predict import check_visualize, check_window_flags, draw_points
from ila.engine.session import InferenceSession
from ila.errors import UserError, one_line, printable
from ila.version import __version__

INSTALL = "pip install -e '.[serve]' in the ila checkout (or bash scripts/setup.sh serve)"
PAGE = Path(__file__).resolve().parent / "web" / "index.html"
FIELDS = ("video", "topk", "window", "stride", "block")


class ClientError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_serve_extra() -> None:
    """A one-line UserError naming the install command when the `serve` extra is missing."""
    missing = [m for m in ("starlette", "uvicorn", "python_multipart") if not _importable(m)]
    if missing:
        raise UserError(f"ila serve needs {', '.join(missing)}: install the serve extra with {INSTALL}")


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def open_session(checkpoint, classes=None, temporal: str | None = None, overrides: Sequence[str] = (),
                 precision: str = "fp32", quiet: bool = False) -> InferenceSession:
    """The server's inference session (`precision`: one of `ila.models.fuse.PRECISIONS`, checked by the session)."""
    return InferenceSession(checkpoint, classes, overrides, temporal=temporal, quiet=quiet, precision=precision)


class Batcher:
    """The model's one owner: a worker thread that runs the forward passes of all requests. `forward(views)` (from
    any thread) queues views `(B, V, T, 3, S, S)` and waits for their probabilities `(B, K)`; the worker takes the
    first queued views, then more as they come, until `max_batch` clips (rows) or `max_wait_ms` have passed, and runs
    those of one view shape as one batch (`InferenceSession.probabilities`). `call(fn)` runs `fn()` on the worker
    alone (pictures that read the model's alignment maps). `stats`: requests' clips and batches so far."""

    def __init__(self, session: InferenceSession, max_batch: int = 8, max_wait_ms: float = 10.0):
        self.check(max_batch, max_wait_ms)
        self.session, self.max_batch, self.max_wait = session, max_batch, max_wait_ms / 1000
        self.jobs: queue.Queue = queue.Queue()
        self.stats = {"batches": 0, "clips": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._work, name="ila-serve-model", daemon=True)
        self._thread.start()

    @staticmethod
    def check(max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise UserError(f"--max-batch {max_batch}: use 1 or more")
        if not 0 <= max_wait_ms < 1e6:
            raise UserError(f"--max-wait-ms {max_wait_ms}: use 0 or more (milliseconds)")

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        future: Future = Future()
        self.jobs.put(("views", views, future))
        return future.result()

    def call(self, fn: Callable):
        future: Future = Future()
        self.jobs.put(("call", fn, future))
        return future.result()

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        pending: list = []                    # a call (or the stop) met while a batch was collected: runs next
        while True:
            job = pending.pop(0) if pending else self.jobs.get()
            if job is None:
                return
            if job[0] == "call":
                self._run(job[2], job[1])
                continue
            batch, clips = [job], len(job[1])
            deadline = time.monotonic() + self.max_wait
            while clips < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    more = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None or more[0] == "call":
                    pending.append(more)
                    break
                batch.append(more)
                clips += len(more[1])
            shapes: dict = {}
            for item in batch:
                shapes.setdefault((tuple(item[1].shape[1:]), item[1].dtype), []).append(item)
            for group in shapes.values():
                futures = [item[2] for item in group]
                self._run(futures, lambda g=group: self._probabilities([item[1] for item in g]))

    def _probabilities(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        session = self.session
        with torch.no_grad(), autocast(session.amp, session.env.device):
            probs = session.probabilities(torch.cat(views).to(session.env.device)).float()
        self.stats["batches"] += 1
        self.stats["clips"] += len(probs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(probs))
        return list(probs.split([len(v) for v in views]))

    @staticmethod
    def _run(futures, fn: Callable) -> None:
        many = isinstance(futures, list)
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting requests, the worker goes on
            for f in futures if many else [futures]:
                f.set_exception(e)
            return
        for f, r in zip(futures, result) if many else [(futures, result)]:
            f.set_result(r)


def upload_name(filename: str | None) -> str:
    """The name a response shows for an upload: the last component of the file name the client gave (never used as
    a path), printable, at most 120 characters; `video` without one."""
    name = os.path.basename(str(filename or "").replace("\\", "/")).strip()
    name = printable(name)[:120]
    return name if name not in ("", ".", "..") else "video"


def _suffix(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ".mp4"


class Service:
    """What the routes do, without HTTP: a session, its batcher, the private upload folder and the limits."""

    def __init__(self, session: InferenceSession, batcher: Batcher, max_upload_mb: float = 100,
                 read_timeout: float = 10.0, max_pending: int = 64, upload_timeout: float = 120.0):
        self.check(max_upload_mb, read_timeout, upload_timeout, max_pending)
        self.session, self.batcher = session, batcher
        self.max_bytes, self.max_pending = int(max_upload_mb * 2 ** 20), max_pending
        self.read_timeout, self.upload_timeout = read_timeout, upload_timeout
        self.folder = tempfile.mkdtemp(prefix="ila-serve-")          # mode 0700: this process only
        self.pending = 0
        self.requests = {"answered": 0, "refused": 0}

    @staticmethod
    def check(max_upload_mb: float, read_timeout: float, upload_timeout: float, max_pending: int) -> None:
        if not 0 < max_upload_mb < 1e7:
            raise UserError(f"--max-upload-mb {max_upload_mb}: use a size in MB > 0")
        for flag, value in (("--read-timeout", read_timeout), ("--upload-timeout", upload_timeout)):
            if not 0 < value < 1e6:
                raise UserError(f"{flag} {value}: use seconds > 0")
        if max_pending < 1:
            raise UserError(f"--max-pending {max_pending}: use 1 or more")

    def close(self) -> None:
        self.batcher.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def health(self) -> dict:
        s = self.session
        source = str(s.source)
        model = os.path.basename(os.path.normpath(source)) if os.path.exists(source) else source
        return {"status": "ok", "model": model,
                "temporal": s.cfg.model.temporal, "classes": len(s.class_names), "frames": s.cfg.data.num_frames,
                "size": s.cfg.data.input_size, "device": str(s.env.device), "precision": s.precision,
                "version": __version__, "alignment_maps": bool(s.model.has_alignment_maps),
                "max_upload_mb": round(self.max_bytes / 2 ** 20, 3), "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1000, "batches": dict(self.batcher.stats),
                "requests": dict(self.requests)}

    # ------------------------------------------------------------------ one request (in a worker thread)
    def predict(self, path: str, name: str, topk: int, window: float | None, stride: float | None) -> list[dict]:
        """What `ila predict PATH --json [--topk] [--window --stride]` prints, with `name` for the video."""
        s = self.session
        if window is None:
            result = s.predict([path], topk, progress=False, forward=self.batcher.forward)[0]
        else:
            try:
                result = s.windows(path, window, stride, topk, forward=self.batcher.forward)
            except VideoReadError as e:
                result = {"video": path, "error": e.reason}
            except UserError as e:
                result = {"video": path, "error": str(e)}
            if "windows" in result:
                result["windows"] = [{k: v for k, v in w.items() if k != "probabilities"} for w in result["windows"]]
        if "error" in result:
            raise ClientError(400, self.scrub(f"{path}: {result['error']}", path, name))
        return [{**result, "video": name}]

    def points(self, path: str, name: str, block: int) -> bytes:
        """The alignment points picture of the video (`ila predict --visualize`), as PNG bytes."""
        s = self.session
        check_visualize(s, block)
        result = self.predict(path, name, 1, None, None)[0]
        out = os.path.join(self.folder, f"{os.path.basename(path)}.png")
        try:
            self.batcher.call(lambda: draw_points(s, path, out, block, result, name))
            return Path(out).read_bytes()
        finally:
            if os.path.exists(out):
                os.unlink(out)

    @staticmethod
    def scrub(text: str, path: str, name: str) -> str:
        """An error line with the temporary file's path replaced by the upload's name."""
        return one_line(printable(str(text).replace(path, name)), 500)


# ---------------------------------------------------------------------------------------------------- HTTP
def fields(form) -> dict:
    """The request's optional fields, checked: topk (>= 1), window and stride (seconds, as `ila predict` takes
    them), block (an int); a ClientError line otherwise."""
    unknown = sorted(k for k in form.keys() if k not in FIELDS)
    if unknown:
        raise ClientError(400, f"unknown form field {printable(unknown[0])[:40]!r}: the fields are "
                               f"{', '.join(FIELDS)}")
    given = {k: form.get(k) for k in FIELDS[1:] if form.get(k) not in (None, "")}
    for k, v in given.items():
        if not isinstance(v, str):
            raise ClientError(400, f"field {k} must be a value, not a file")
    out = {"topk": 5, "window": None, "stride": None, "block": -1}
    for k, kind in (("topk", int), ("block", int), ("window", float), ("stride", float)):
        if k in given:
            try:
                out[k] = kind(given[k].strip()[:40])
            except ValueError:
                raise ClientError(400, f"{k} {printable(given[k])[:24]!r}: give "
                                       f"{'a whole number' if kind is int else 'a number of seconds'}") from None
    if not 1 <= out["topk"] <= 1000:
        raise ClientError(400, f"topk {out['topk']}: use 1 to 1000")
    try:
        out["window"], out["stride"] = check_window_flags(out["window"], out["stride"])
    except UserError as e:
        raise ClientError(400, str(e).replace("--window", "window").replace("--stride", "stride")) from None
    return out


def build_app(service: Service):
    """The Starlette app of `service` (routes in the module docstring)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        # a body too large or too slow: the connection is closed after the answer, the rest never read
        close = {"Connection": "close"} if status in (408, 413) else None
        return JSONResponse({"error": one_line(printable(message), 500)}, status_code=status, headers=close)

    async def body(request):
        """The request body as it arrives: at most `max_bytes`, each chunk within `read_timeout` seconds of the
        previous one, all of it within `upload_timeout` seconds."""
        seen, stream = 0, request.stream().__aiter__()
        deadline = time.monotonic() + service.upload_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(min(service.read_timeout, left), 0))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                if left <= service.read_timeout:
                    raise ClientError(408, f"the upload took longer than {service.upload_timeout:g} s, this server's "
                                           f"limit (ila serve --upload-timeout)") from None
                raise ClientError(408, f"the upload stalled: no data for {service.read_timeout:g} s") from None
            seen += len(chunk)
            if seen > service.max_bytes:
                raise ClientError(413, f"the upload is larger than {service.max_bytes / 2 ** 20:g} MB, this server's "
                                       f"limit (ila serve --max-upload-mb)")
            yield chunk

    async def upload(request):
        """The form of a multipart request, its `video` written to a private temporary file: (path, name, fields)."""
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            raise ClientError(400, "send the video as multipart/form-data in a field named video (curl -F "
                                   "video=@clip.mp4 URL)")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > service.max_bytes:
            raise ClientError(413, f"the upload ({int(length) / 2 ** 20:.1f} MB) is larger than "
                                   f"{service.max_bytes / 2 ** 20:g} MB, this server's limit "
                                   f"(ila serve --max-upload-mb)")
        parser = MultiPartParser(request.headers, body(request), max_files=1, max_fields=len(FIELDS),
                                 max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise ClientError(400, f"the multipart form could not be read: {e}") from None
        try:
            video = form.get("video")
            if video is None:
                raise ClientError(400, "no video: send the file in a multipart field named video (curl -F "
                                       "video=@clip.mp4 URL)")
            if isinstance(video, str) or not hasattr(video, "file"):
                raise ClientError(400, "the video field holds text, not a file (curl -F video=@clip.mp4: mind the @)")
            options = fields(form)
            name = upload_name(video.filename)
            fd, path = tempfile.mkstemp(suffix=_suffix(name), dir=service.folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    await run_in_threadpool(shutil.copyfileobj, video.file, out, 1 << 20)
                if os.path.getsize(path) == 0:
                    raise ClientError(400, f"{name}: the video field is empty (0 bytes)")
            except BaseException:
                os.unlink(path)                       # a full disk, an empty file: nothing left behind
                raise
            return path, name, options
        finally:
            await form.close()

    async def handle(request, work: Callable):
        """Run `work(path, name, fields)` on an upload in a worker thread; the temporary file is deleted after."""
        if service.pending >= service.max_pending:
            service.requests["refused"] += 1
            return error(503, f"busy: {service.pending} requests in progress (ila serve --max-pending); try again")
        service.pending += 1
        path = None
        try:
            path, name, options = await upload(request)
            response = await run_in_threadpool(work, path, name, options)
            service.requests["answered"] += 1
            return response
        except ClientError as e:
            return error(e.status, str(e))
        except ClientDisconnect:
            return error(400, "the client went away before the upload was complete")
        except UserError as e:
            return error(400, service.scrub(e, path, name) if path else str(e))
        except Exception as e:  # noqa: BLE001 - a fault of the server: one line to the client, the trace here
            traceback.print_exc(file=sys.stderr)
            return error(500, f"internal error: {type(e).__name__}: {one_line(e, 200)}")
        finally:
            service.pending -= 1
            if path and os.path.exists(path):
                os.unlink(path)

    async def predict(request):
        return await handle(request, lambda path, name, o: JSONResponse(
            service.predict(path, name, o["topk"], o["window"], o["stride"])))

    async def points(request):
        return await handle(request, lambda path, name, o: Response(
            service.points(path, name, o["block"]), media_type="image/png"))

    async def health(request):
        return JSONResponse(service.health())

    async def page(request):
        return HTMLResponse(PAGE.read_text())

    async def http_error(request, exc: HTTPException):
        if exc.status_code == 405:
            return error(405, f"{request.method} {request.url.path}: use "
                              f"{'POST' if request.url.path in ('/predict', '/points') else 'GET'}")
        if exc.status_code == 404:
            return error(404, f"no route {request.url.path[:80]}: the routes are GET /, GET /health, POST /predict, "
                              f"POST /points")
        return error(exc.status_code, str(exc.detail))

    routes = [Route("/", page, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/predict", predict, methods=["POST"]), Route("/points", points, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def header_deadline(seconds: float):
    """uvicorn's h11 protocol with a deadline for a request's line and headers: a connection that has not sent them
    complete `seconds` after it opened (or after its previous response) is closed. uvicorn has no such timeout, so
    a client sending headers slowly (slowloris) would hold its connection for as long as it likes."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()                # no request under way: its headers are late

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()                        # a request's headers are in: the body has its own limits

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"):
    """A uvicorn server of `service`. Its limits: a connection must send a request's headers within
    `service.read_timeout` s of opening or of its previous response (`header_deadline`), else it is closed; headers
    are at most 16 KB (h11's limit; larger: 400); an idle keep-alive connection is closed after 5 s; a request body
    that sends nothing for `service.read_timeout` s, or that takes longer than `service.upload_timeout` s in all, is
    answered 408; more than `service.max_pending` requests in progress: 503 (ours, JSON); more than
    2 x max_pending + 16 connections: 503 (uvicorn's, plain text)."""
    import uvicorn

    config = uvicorn.Config(build_app(service), host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                            http=header_deadline(service.read_timeout),
                            limit_concurrency=2 * service.max_pending + 16, timeout_graceful_shutdown=5,
                            access_log=log_level in ("info", "debug"))
    return uvicorn.Server(config)


def run_serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, precision: str = "fp32", max_batch: int = 8,
              max_wait_ms: float = 10.0, max_upload_mb: float = 100, classes=None, temporal: str | None = None,
              overrides: Sequence[str] = (), read_timeout: float = 10.0, max_pending: int = 64,
              upload_timeout: float = 120.0) -> int:
    """`ila serve`: load the model once, then serve it until interrupted."""
    check_serve_extra()
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: use 0 to 65535")
    Batcher.check(max_batch, max_wait_ms)
    Service.check(max_upload_mb, read_timeout, upload_timeout, max_pending)     # all before the model is loaded
    session = open_session(checkpoint, classes, temporal, overrides, precision)
    sock = listen(host, port)
    port = sock.getsockname()[1]
    service = Service(session, Batcher(session, max_batch, max_wait_ms), max_upload_mb, read_timeout,
                      max_pending, upload_timeout)
    server = make_server(service, host, port, log_level="info")
    shown = f"[{host}]" if ":" in host else host
    print(f"ila serve: {service.health()['model']} ({len(session.class_names)} classes, {session.env.device}, "
          f"{precision}) on http://{shown}:{port}/ (batches of up to {max_batch} clips or {max_wait_ms:g} ms; "
          f"uploads up to {max_upload_mb:g} MB); Ctrl+C stops", file=sys.stderr, flush=True)
    stop = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _terminate)        # uvicorn stops on SIGTERM, then raises it again: ours exits
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):  # Ctrl+C or SIGTERM: a requested stop
        pass
    finally:
        signal.signal(signal.SIGTERM, stop)
        service.close()
        sock.close()
    print("ila serve: stopped", file=sys.stderr)
    return 0


class _Stop(Exception):
    """SIGTERM, after uvicorn's graceful shutdown."""


def _terminate(signum, frame):
    raise _Stop


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port), or a one-line UserError saying why not."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e} (another port: --port, another address: "
                        f"--host)") from None
