"""`ila serve` (issue "The front door", point 2): a real server on a free port of 127.0.0.1 answers exactly what
`ila predict --json` prints, refuses bad requests with one line of JSON, limits uploads while they arrive, batches
concurrent requests onto the one model without changing an answer, and its web page works in a real browser."""
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from ila.cli import main  # noqa: E402
from ila.data.synthetic import render_clip, write_mp4  # noqa: E402
from ila.serve import Batcher, Service, listen, make_server, open_session  # noqa: E402
from test_engine_edges import checkpoint_file  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def ckpt(motion, tmp_path_factory):
    return checkpoint_file(motion, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def videos(motion, tmp_path_factory):
    """The 5 generated validation videos and a 3 s video (48 frames at 16 fps) for windows."""
    val = sorted(str(motion / "val" / f) for f in os.listdir(motion / "val"))
    long = str(tmp_path_factory.mktemp("long") / "long.mp4")
    rng = np.random.default_rng(1)
    write_mp4(long, np.concatenate([render_clip(k, 32, 16, rng) for k in (0, 3, 1)]))
    return {"val": val, "long": long}


@contextmanager
def serving(ckpt, **limits):
    """`ila serve`'s server for `ckpt` on a free port of 127.0.0.1, in a thread: (base URL, service)."""
    batch = {k: limits.pop(k) for k in ("max_batch", "max_wait_ms") if k in limits}
    session = open_session(ckpt, quiet=True)
    service = Service(session, Batcher(session, **batch), **limits)
    sock = listen("127.0.0.1", 0)
    server = make_server(service, "127.0.0.1", sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(10)
        service.close()
        sock.close()


@pytest.fixture(scope="module")
def server(ckpt):
    with serving(ckpt, max_upload_mb=0.25, read_timeout=1.5, upload_timeout=6) as running:
        yield running


def predict_json(capsys, ckpt, video, *flags) -> list[dict]:
    """What `ila predict --checkpoint CKPT VIDEO [flags] --json` prints, run in the video's folder (so that it names
    the video as the server does: by its file name)."""
    capsys.readouterr()
    here = os.getcwd()
    os.chdir(os.path.dirname(video))
    try:
        code = main(["predict", "--checkpoint", str(ckpt), os.path.basename(video), *map(str, flags), "--json"])
    finally:
        os.chdir(here)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def post(url: str, path: str | None = None, name: str | None = None, data: dict | None = None, route="/predict",
         content: bytes | None = None):
    files = None
    if path is not None or content is not None:
        files = {"video": (name or os.path.basename(path), content if content is not None else open(path, "rb").read(),
                           "video/mp4")}
    return httpx.post(url + route, files=files, data=data or {}, timeout=120)


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text and list(response.json()) == ["error"]
    return response.json()["error"]


def raw(url: str, request: bytes, wait: float = 30) -> bytes:
    """Send `request` bytes on a new connection and read until the server closes it (or `wait` s pass)."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return data


def multipart_head(boundary: str, name="v.mp4") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"{name}\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()


def test_health_describes_the_model(server, ckpt):
    url, service = server
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "model.pt" and health["classes"] == 8
    assert health["device"] == "cpu" and health["precision"] == "fp32" and health["temporal"] == "ila"
    assert health["alignment_maps"] is True and health["max_upload_mb"] == 0.25
    from ila.version import __version__
    assert health["version"] == __version__


def test_predict_answers_what_predict_json_prints(server, ckpt, videos, capsys):
    url, service = server
    for video in videos["val"][:3]:
        expected = predict_json(capsys, ckpt, video)
        got = post(url, video)
        assert got.status_code == 200 and got.json() == expected           # the same file name, classes, numbers
        expected = predict_json(capsys, ckpt, video, "--topk", "2")
        assert post(url, video, data={"topk": "2"}).json() == expected
    long = videos["long"]
    expected = predict_json(capsys, ckpt, long, "--window", "1", "--stride", "0.5")
    got = post(url, long, data={"window": "1", "stride": "0.5"}).json()
    assert got == expected and len(got[0]["windows"]) == 5
    assert post(url, long, data={"window": "1.25"}).json() == predict_json(capsys, ckpt, long,
                                                                           "--window", "1.25")
    assert os.listdir(service.folder) == []                               # every upload deleted after its answer


def test_points_picture_is_predicts_visualize(server, ckpt, videos, tmp_path, capsys):
    url, _ = server
    video = videos["val"][0]
    main(["predict", "--checkpoint", str(ckpt), video, "--visualize", str(tmp_path / "points.png")])
    got = post(url, video, route="/points")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == (tmp_path / "points.png").read_bytes()            # the same picture, to the byte
    assert one_line_error(post(url, video, route="/points", data={"block": "9"}), 400).startswith("--block 9 is out")


def test_errors_are_one_line_json(server, videos):
    url, service = server
    assert one_line_error(httpx.get(url + "/nope"), 404).startswith("no route /nope")
    assert one_line_error(httpx.get(url + "/predict"), 405) == "GET /predict: use POST"
    assert one_line_error(httpx.delete(url + "/health"), 405) == "DELETE /health: use GET"
    assert "multipart/form-data" in one_line_error(httpx.post(url + "/predict", json={"video": "x"}), 400)
    assert "multipart/form-data" in one_line_error(post(url, data={"topk": "3"}), 400)     # a form without files
    assert one_line_error(httpx.post(url + "/predict", files={"clip": ("a.mp4", b"x")}), 400).startswith("no video")
    assert one_line_error(httpx.post(url + "/predict", files={"video": (None, "clip.mp4")}), 400).startswith(
        "the video field holds text")
    assert one_line_error(post(url, content=b"", name="e.mp4"), 400) == "e.mp4: the video field is empty (0 bytes)"
    bad = one_line_error(post(url, content=b"this is not a video\n" * 50, name="notes.mp4"), 400)
    assert bad.startswith("notes.mp4: ") and service.folder not in bad and "/tmp" not in bad and "ila-serve" not in bad
    video = videos["val"][0]
    for data, start in (({"topk": "0"}, "topk 0: use 1 to 1000"), ({"topk": "two"}, "topk 'two': give a whole"),
                        ({"window": "-1"}, "window -1.0: give a window length in seconds > 0"),
                        ({"window": "nan"}, "window nan"),
                        ({"stride": "1"}, "stride needs window"), ({"window": "1e-9"}, "window 1e-09: give at least"),
                        ({"window": "abc"}, "window 'abc': give a number of seconds"),
                        ({"path": "/etc/passwd"}, "unknown form field 'path'")):
        assert one_line_error(post(url, video, data=data), 400).startswith(start), data
    # a window shorter than one frame of this video: the video's own check, as `ila predict` says it
    assert "shorter than one frame" in one_line_error(post(url, video, data={"window": "0.01"}), 400)
    assert os.listdir(service.folder) == []


def test_nothing_in_a_request_names_a_server_path(server, videos, tmp_path):
    url, service = server
    expected = post(url, videos["val"][1]).json()
    for name in ("../../etc/passwd", "/etc/passwd", "..\\..\\windows\\system.ini", "a/b/../../c.mp4", "..",
                 "\x1b[31mred.mp4"):
        got = post(url, videos["val"][1], name=name)
        assert got.status_code == 200, got.text
        shown = got.json()[0]["video"]
        assert "/" not in shown and "\\" not in shown and "\x1b" not in shown and shown not in ("", "..")
        assert got.json() == [{**expected[0], "video": shown}]
    assert os.listdir(service.folder) == [] and not os.path.exists("/etc/passwd.mp4")


def test_upload_limit_is_enforced_while_the_body_arrives(server):
    url, service = server
    limit = service.max_bytes
    # a declared size over the limit: refused before any of the body is sent
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            f"Content-Length: {limit * 40}\r\n\r\n").encode()
    answer = raw(url, head)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than 0.25 MB" in answer
    # no declared size (chunked): refused as soon as the bytes read pass the limit, the rest never sent
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    body = multipart_head("B") + b"\0" * (limit + 1 - len(multipart_head("B")))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                      for i in range(0, len(body), 65536))
    answer = raw(url, head + chunks[:-2])                 # the last chunk's own CRLF not sent: the body never ends
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'"error":"the upload is larger than 0.25 MB, this server\'s limit '
                           b'(ila serve --max-upload-mb)"}')
    assert os.listdir(service.folder) == []


def test_a_stalled_upload_is_refused_after_the_read_timeout(server):
    url, service = server
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Content-Length: 100000\r\n\r\n")
    answer = raw(url, head + multipart_head("B") + b"\0" * 1000)       # then nothing: a slow client
    assert answer.startswith(b"HTTP/1.1 408 ") and b"no data for 1.5 s" in answer
    assert os.listdir(service.folder) == []


def test_slow_clients_are_cut_off(server):
    """Slowloris: headers sent a line at a time, a body a byte at a time, a connection that sends nothing."""
    url, service = server
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        closed = None
        for i in range(60):                          # a header line every 0.25 s: never complete
            try:
                s.sendall(b"X-%d: y\r\n" % i)
            except OSError:
                closed = i
                break
            s.settimeout(0.25)
            try:
                if s.recv(100) == b"":
                    closed = i
                    break
            except socket.timeout:
                pass
        assert closed is not None and closed < 30     # closed by the 1.5 s header deadline, well before 15 s
    with socket.create_connection((host, int(port)), timeout=30) as s:
        assert s.recv(100) == b""                     # an idle connection is closed, not kept
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Content-Length: 100000\r\n\r\n" + multipart_head("B"))
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        answer = b""
        for _ in range(60):                          # a byte every 0.5 s: under the 1.5 s idle limit
            try:
                s.sendall(b"x")
            except OSError:
                break
            s.settimeout(0.5)
            try:
                answer += s.recv(1000)
                if answer:
                    break
            except socket.timeout:
                pass
        s.settimeout(10)
        while answer and (chunk := s.recv(1000)):   # the rest of the answer, up to the close (408 closes)
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"the upload took longer than 6 s" in answer
    assert os.listdir(service.folder) == []


def test_concurrent_requests_are_batched_and_answer_as_alone(ckpt, videos, capsys):
    alone = {v: predict_json(capsys, ckpt, v) for v in videos["val"][:4]}
    # up to 4 clips or 60 s: the 4 requests are run as one batch of 4, whenever they arrive
    with serving(ckpt, max_batch=4, max_wait_ms=60_000) as (url, service):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda v: post(url, v), videos["val"][:4]))
        assert service.batcher.stats == {"batches": 1, "clips": 4, "largest_batch": 4}
    for video, answer in zip(videos["val"][:4], answers):
        assert answer.status_code == 200 and answer.json() == alone[video]


def test_many_concurrent_requests_all_answered(server, ckpt, videos, capsys):
    url, service = server
    jobs = [(v, {}) for v in videos["val"]] * 3 + [(videos["long"], {"window": "1", "stride": "0.5"})] * 3
    expected = {}
    for video, data in jobs:
        if (video, json.dumps(data)) not in expected:
            flags = [x for k, value in data.items() for x in (f"--{k}", value)]
            expected[(video, json.dumps(data))] = predict_json(capsys, ckpt, video, *flags)
    before = dict(service.batcher.stats)
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: post(url, job[0], data=job[1]), jobs))
    for (video, data), answer in zip(jobs, answers):
        assert answer.status_code == 200 and answer.json() == expected[(video, json.dumps(data))]
    assert service.batcher.stats["clips"] - before["clips"] == 15 + 3 * 5
    assert os.listdir(service.folder) == []


def test_ila_serve_command_line(ckpt, videos, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "ila", "serve", "--checkpoint", str(ckpt), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert line.startswith("ila serve: model.pt (8 classes, cpu, fp32) on http://127.0.0.1:"), line
        url = line.split(" on ")[1].split("/ ")[0]
        assert httpx.get(url + "/health").json()["classes"] == 8
        assert post(url, videos["val"][0]).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)                   # Ctrl+C
        proc.wait(30)
    assert proc.returncode == 0 and proc.stderr.read().endswith("ila serve: stopped\n")
    # SIGTERM (how service managers stop a server): the same clean stop, its upload folder removed
    folders = set(glob.glob(os.path.join(tempfile.gettempdir(), "ila-serve-*")))
    proc = subprocess.Popen([sys.executable, "-m", "ila", "serve", "--checkpoint", str(ckpt), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert "on http://127.0.0.1:" in proc.stderr.readline()
    mine = set(glob.glob(os.path.join(tempfile.gettempdir(), "ila-serve-*"))) - folders
    assert len(mine) == 1
    proc.terminate()
    assert proc.wait(30) == 0 and proc.stderr.read().endswith("ila serve: stopped\n")
    assert not os.path.exists(mine.pop())
    # a port in use, a missing extra, bad limits: one line each, exit status 2
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for argv, start in (([f"--port={port}"], f"ila serve: error: cannot serve on 127.0.0.1:{port}: "),
                            (["--max-batch", "0"], "ila serve: error: --max-batch 0: use 1 or more"),
                            (["--max-upload-mb", "0"], "ila serve: error: --max-upload-mb 0.0: use a size")):
            done = subprocess.run([sys.executable, "-m", "ila", "serve", "--checkpoint", str(ckpt), *argv],
                                  capture_output=True, text=True, env=env, timeout=120)
            assert done.returncode == 2 and done.stderr.startswith(start) and done.stderr.count("\n") == 1, done.stderr
    code = "import sys; sys.modules['uvicorn'] = None; from ila.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "serve", "--checkpoint", str(ckpt)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr == ("ila serve: error: ila serve needs uvicorn: install the serve "
                                                    "extra with pip install -e '.[serve]' in the ila checkout (or bash "
                                                    "scripts/setup.sh serve)\n")


def test_precision_reaches_the_session(ckpt):
    from ila.errors import UserError

    fp32, bf16 = open_session(ckpt, quiet=True), open_session(ckpt, precision="bf16", quiet=True)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert next(bf16.model.visual.parameters()).dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision 'fp8'; choose one of fp32, bf16"):
        open_session(ckpt, precision="fp8", quiet=True)


def browser():
    """Debian's Chromium driven by Playwright; skipped only where it is missing outside CI."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing, sync_playwright = "playwright is not installed (pip install playwright)", None
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"no {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


def test_the_web_page_in_a_real_browser(server, ckpt, videos, tmp_path, capsys):
    sync_playwright = browser()
    from PIL import Image

    url, _ = server
    long = videos["long"]
    expected = predict_json(capsys, ckpt, long, "--window", "1", "--stride", "0.5")[0]
    best = max((p["probability"], p["class"]) for w in expected["windows"] for p in w["predictions"])
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = chrome.new_page(viewport={"width": 960, "height": 1500})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('8 classes')")
            page.set_input_files("#video", long)
            page.fill("#window", "1")
            page.fill("#stride", "0.5")
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').textContent.endsWith(': done')", timeout=60_000)
            page.wait_for_selector("#points-section:not(.hidden)")
            assert page.locator("#top .name").first.inner_text() == best[1]
            assert page.locator("#top .pct").first.inner_text() == f"{100 * best[0]:.1f}%"
            assert page.locator("#windows tr").count() == 1 + len(expected["windows"])
            assert page.locator("#timeline polyline").count() >= 1
            assert page.evaluate("document.getElementById('points').naturalWidth") > 100
            shot = page.screenshot(full_page=False)
        finally:
            chrome.close()
    (tmp_path / "page.png").write_bytes(shot)
    if os.environ.get("ILA_SERVE_SCREENSHOT"):                          # the docs' picture
        shutil.copy(tmp_path / "page.png", os.environ["ILA_SERVE_SCREENSHOT"])
    image = Image.open(io.BytesIO(shot))
    assert image.format == "PNG" and image.size == (960, 1500)
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200          # text, bars, the timeline, the picture
    bar = np.all(pixels == (0x2F, 0x6F, 0xE0), axis=-1)                 # the top classes' bars are drawn
    assert bar.sum() > 500
