"""Live streams: `ila predict URL` on a stream that PyAV serves over TCP on 127.0.0.1 (a thread muxing a generated
video as MPEG-TS into a socket), windows printed as they complete with the same predictions as the file read
directly; a stream that stops sending, an unreachable URL, bad flags and FFmpeg's local protocols each end in one
line; memory stays bounded; timestamps that jump are bridged."""
import functools
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
from test_engine_edges import error_line
from test_engine_evaluate import ila_model
from test_engine_train import tiny

from ila.cli import main
from ila.data.stream import FrameRing, check_stream_url, is_stream
from ila.data.synthetic import write_long_video
from ila.engine.checkpoint import save_checkpoint
from ila.engine.live import stream_windows, tail_spans
from ila.engine.session import InferenceSession, window_spans
from ila.errors import UserError

WINDOW, STRIDE = 1.0, 0.75          # over a 3 s video: windows at 0, 0.75, 1.5 and one ending at the end, (2, 3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """Serves one video file once as MPEG-TS over TCP on 127.0.0.1 from a thread: the file's packets, as they are
    (`shift(i) -> ticks` moves packet i's timestamps; `retime(i) -> ticks` sets them; `restart`: from that packet on,
    a new muxer, as a sender
    that restarts does, so the timestamps may go back), then it closes, or with `stall` it keeps the connection
    open without sending until `release()`."""

    def __init__(self, path: str, stall: bool = False, shift=None, retime=None, restart: int | None = None):
        self.path, self.stall, self.shift, self.retime, self.restart = path, stall, shift, retime, restart
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("wb") as sink, av.open(self.path) as source:
            video = source.streams.video[0]
            out = stream = None
            for i, packet in enumerate(p for p in source.demux(video) if p.dts is not None):
                if out is None or i == self.restart:
                    if out is not None:
                        out.close()
                    out = av.open(sink, "w", format="mpegts", buffer_size=188)   # nothing held back by PyAV
                    stream = out.add_stream_from_template(video)
                if self.shift is not None:
                    packet.pts, packet.dts = packet.pts + self.shift(i), packet.dts + self.shift(i)
                if self.retime is not None:
                    packet.pts = packet.dts = self.retime(i)
                packet.stream = stream
                out.mux(packet)
            sink.flush()
            if self.stall:
                self._release.wait(60)
            else:
                out.close()

    def release(self) -> None:
        self._release.set()
        self.listener.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny checkpoint and a 3 s video (8 fps, 48x32, six 0.5 s motion segments) to serve."""
    root = tmp_path_factory.mktemp("streams")
    cfg = tiny(str(root), str(root / "out"))
    names = [f"class {k}" for k in range(8)]
    checkpoint = save_checkpoint(root / "model.pt", ila_model(), cfg, names)
    video = str(root / "long.mp4")
    duration = write_long_video(video, [0, 1, 2, 3, 4, 5], 0.5, size=(48, 32), fps=8, keyframe_every=4)
    assert duration == 3.0
    return str(checkpoint), video


@pytest.fixture(scope="module")
def session(served):
    return InferenceSession(served[0], device="cpu", quiet=True)


@pytest.fixture(scope="module")
def from_file(served, session):
    """The file path's windows of the video, read directly."""
    return session.windows(served[1], WINDOW, STRIDE, topk=3)["windows"]


def to_mpegts(path: str, out_path: str) -> None:
    """The video stream of `path` remuxed, packets unchanged, into an MPEG-TS file (what a live sender sends)."""
    with av.open(path) as source, av.open(out_path, "w", format="mpegts") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def same_windows(got: list[dict], expected: list[dict]) -> None:
    assert [(w["start"], w["end"]) for w in got] == [(w["start"], w["end"]) for w in expected]
    assert [w["predictions"][0]["class"] for w in got] == [w["predictions"][0]["class"] for w in expected]
    for g, e in zip(got, expected):
        for p, q in zip(g["predictions"], e["predictions"]):
            assert p["class"] == q["class"] and p["probability"] == pytest.approx(q["probability"], abs=1e-5)


def _sigint_as_at_a_terminal() -> None:
    """In the child, before Python starts: SIGINT to its default. A test run started in the background by a shell
    without job control (`cmd &` in a script, as a CI runner may do) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler: the Ctrl-C under test would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_predict_on_a_tcp_stream_prints_json_lines_as_the_file_path_scores_them(served, from_file):
    """`ila predict URL --json` in a subprocess: one JSON object per window, in order, each printed before the
    stream ends (the server stalls after its last packet), the same windows and top-1 as the file read directly,
    a delay >= 0; Ctrl-C then ends it cleanly: exit 130, one line, the windows printed so far intact."""
    checkpoint, video = served
    assert [(w["start"], w["end"]) for w in from_file] == [(0.0, 1.0), (0.75, 1.75), (1.5, 2.5), (2.0, 3.0)]
    server = Server(video, stall=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "ila", "predict", "--checkpoint", checkpoint, server.url,
                             "--window", str(WINDOW), "--stride", str(STRIDE), "--json", "--topk", "3",
                             "--timeout", "60", "--set", "device=cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_sigint_as_at_a_terminal)
    try:
        # the stream stays open: windows come while it plays (the last ones wait for frames that the demuxer and
        # decoder hold until more packets or the stream's end come)
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        server.release()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert error_line(err) == "ila predict: interrupted"
    lines += [json.loads(line) for line in out.splitlines()]
    assert all(list(w) == ["start", "end", "predictions", "delay"] for w in lines)
    assert all(w["delay"] >= 0 and len(w["predictions"]) == 3 for w in lines)
    assert len(lines) in (2, 3)
    same_windows(lines, from_file[:len(lines)])


def test_a_stream_that_ends_gives_every_window_of_the_file_and_so_does_the_pipeline(served, session, from_file):
    """Served whole, then closed: every window of the file, the tail window (2, 3) included, scored when the stream
    ends; `ila.pipeline` on the URL is a generator of the same dicts as the JSON lines."""
    import ila

    checkpoint, video = served
    server = Server(video)
    got = list(stream_windows(session, server.url, WINDOW, STRIDE, topk=3, timeout=30))
    same_windows(got, from_file)
    classify = ila.pipeline(checkpoint, device="cpu", topk=3, quiet=True)
    server = Server(video)
    windows = classify(server.url, window=WINDOW, stride=STRIDE, timeout=30)
    assert not isinstance(windows, list)
    windows = list(windows)
    same_windows(windows, from_file)
    assert all(list(w) == ["start", "end", "predictions", "delay"] for w in windows)
    # a file with window= gives what `ila predict FILE --window --json` prints
    result = classify(video, window=WINDOW, stride=STRIDE)
    same_windows(result[0]["windows"], from_file)
    with pytest.raises(UserError, match="give window=SECONDS"):
        classify(server.url)


def test_a_stream_that_stops_sending_ends_with_the_timeout_line(served, from_file, capsys):
    checkpoint, video = served
    server = Server(video, stall=True)
    try:
        code = main(["predict", "--checkpoint", checkpoint, server.url, "--window", str(WINDOW), "--stride",
                     str(STRIDE), "--json", "--topk", "3", "--timeout", "1", "--set", "device=cpu"])
    finally:
        server.release()
    out, err = capsys.readouterr()
    assert code == 3
    windows = [json.loads(line) for line in out.splitlines()]
    assert len(windows) in (2, 3)                          # the last frames may wait in the demuxer and decoder
    same_windows(windows, from_file[:len(windows)])
    lines = [line for line in err.splitlines() if line.startswith("ila predict")]
    assert lines == [(f"ila predict: {server.url}: no frame for 1 s (--timeout): the stream stopped sending or was "
                      f"dropped; {len(windows)} window(s) scored")]


@pytest.mark.parametrize("argv, expected", [
    (["tcp://127.0.0.1:{port}", "--window", "1"], "{port}: cannot open the stream (Connection refused)"),
    (["tcp://127.0.0.1:{port}"], "a live stream is scored in windows as it plays; give --window SECONDS"),
    (["tcp://127.0.0.1:{port}", "--window", "0"], "--window 0.0: give a window length in seconds > 0"),
    (["tcp://127.0.0.1:{port}", "--window", "nan"], "--window nan: give a window length in seconds > 0"),
    (["tcp://127.0.0.1:{port}", "--window", "1", "--stride", "-1"], "--stride -1.0: give a stride in seconds > 0"),
    (["tcp://127.0.0.1:{port}", "--window", "1", "--timeout", "0"], "--timeout 0.0: give the seconds to wait"),
    (["tcp://127.0.0.1:{port}", "--window", "1", "--timeout", "inf"], "--timeout inf: give the seconds to wait"),
    (["tcp://127.0.0.1:{port}", "--window", "1", "--csv", "out.csv"], "--csv is not available for a live stream"),
    (["{video}", "--timeout", "3"], "--timeout applies to live streams"),
    (["tcp://127.0.0.1:{port}", "{video}", "--window", "1"], "a live stream is read on its own"),
    (["file:///etc/passwd", "--window", "1"], "file:///etc/passwd: file: URLs are not read"),
    (["concat:{video}|{video}", "--window", "1"], "concat: URLs are not read"),
    (["pipe:0", "--window", "1"], "pipe:0: pipe: URLs are not read"),
    (["subfile:,,start,0,end,100,,:{video}", "--window", "1"], "subfile: URLs are not read"),
    (["data:video/mp4;base64,AAAA"], "data: URLs are not read"),
    (["ftp://127.0.0.1/x.mp4", "--window", "1"], "ftp: URLs are not read"),
])
def test_bad_streams_and_flags_are_one_line(served, argv, expected, capsys, tmp_path, monkeypatch):
    """Each refused before any model is loaded, or (unreachable) when the stream is opened: one line, exit 2."""
    checkpoint, video = served
    monkeypatch.chdir(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]                 # a port nothing listens on once closed
    argv = [a.format(port=port, video=video) for a in argv]
    assert main(["predict", "--checkpoint", checkpoint, *argv, "--set", "device=cpu"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("ila predict: error: ") and expected.format(port=port, video=video) in line, line


def test_a_local_file_named_like_a_protocol_is_read_as_that_file(served, session, from_file, tmp_path,
                                                                 monkeypatch):
    """A file called `concat:x|y` in the current folder is that file, never FFmpeg's concat protocol."""
    monkeypatch.chdir(tmp_path)
    name = "concat:long.mp4|long.mp4"
    with open(served[1], "rb") as src, open(name, "wb") as dst:
        dst.write(src.read())
    assert not is_stream(name)
    same_windows(session.windows(name, WINDOW, STRIDE, topk=3)["windows"], from_file)


def test_what_counts_as_a_stream():
    for url in ("rtsp://cam/live", "RTMP://x/app", "tcp://127.0.0.1:9", "udp://@:1234", "http://x/a.m3u8",
                "https://x/y", "srt://x:1", "/dev/video0"):
        assert is_stream(url) and check_stream_url(url) == url
    for name in ("file:x.mp4", "concat:a|b", "pipe:", "subfile:a", "rtsp:cam", "/dev/video", "/dev/sda", "x.mp4"):
        assert not is_stream(name)
        with pytest.raises(UserError):
            check_stream_url(name)


def test_the_buffer_is_bounded_whatever_the_frame_rate(served, session):
    """Timestamps 1/90000 s apart (90,000 fps): a window of 1 s would need every frame the stream sends; past the
    buffer's bytes the stream is refused in one line, before memory grows further."""
    _, video = served
    server = Server(video, retime=lambda i: i)          # the file's time base: 1 tick per frame
    windows = list(stream_windows(session, server.url, WINDOW, STRIDE, timeout=30))
    assert len(windows) == 1                               # 24 frames in well under a second: one window, all of it
    server = Server(video, retime=lambda i: i)
    with pytest.raises(UserError, match=r"do not fit the 0.0\d+ MiB buffer: \d+ frames of \d+x\d+ over 0.000\d+ s "
                                        r"of stream .* use a shorter --window"):
        list(stream_windows(session, server.url, WINDOW, STRIDE, timeout=30, max_bytes=10 * 48 * 32 * 3))
    ring = FrameRing(max_bytes=3 * 12)
    for t in range(3):
        ring.push(float(t), np.zeros((2, 2, 3), np.uint8))
    ring.drop_before(1.5)                                  # the frame on screen at 1.5 stays
    assert list(ring.times) == [1.0, 2.0] and ring.bytes == 24


@pytest.mark.parametrize("jump", ["backwards", "ahead"])
def test_timestamps_that_jump_are_bridged(served, session, from_file, jump):
    """Timestamps that jump back 10 s (a sender resetting its clock) or 1000 s ahead halfway through: the timeline
    goes on from the previous frame, one interval later, so the windows are the file's."""
    _, video = served
    with av.open(video) as container:
        base = container.streams.video[0].time_base
    start, later = (int(20 / base), int(10 / base)) if jump == "backwards" else (0, int(1000 / base))

    server = Server(video, shift=lambda i: start if i < 12 else later, restart=12 if jump == "backwards" else None)
    same_windows(list(stream_windows(session, server.url, WINDOW, STRIDE, topk=3, timeout=30)), from_file)


def test_tail_spans_complete_window_spans():
    """After any number of regular windows, the stream's end adds exactly the rest of the file's windows."""
    for duration, window, stride in [(3.0, 1.0, 0.75), (3.0, 1.0, 1.0), (0.5, 1.0, 1.0), (10.0, 3.0, 2.5)]:
        spans = window_spans(duration, window, stride)
        regular = int((duration - window) / stride + 1e-9) + 1 if duration > window else 1
        for done in range(regular + 1):
            assert tail_spans(duration, window, stride, done) == spans[done:]


def test_http_reads_a_playlist_of_segments_but_never_a_local_file_or_text(served, session, from_file, tmp_path):
    """Over HTTP: an HLS playlist of MPEG-TS segments is a stream (the file's windows); a playlist naming a local
    file, and a text page (FFmpeg would render it as frames), are refused when opened."""
    _, video = served
    to_mpegts(video, str(tmp_path / "segment.ts"))
    (tmp_path / "notes.txt").write_text("not a video\n" * 100)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        for name, segment in (("good.m3u8", f"{base}/segment.ts"), ("local.m3u8", f"file://{video}")):
            (tmp_path / name).write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{segment}\n#EXT-X-ENDLIST\n")
        try:
            same_windows(list(stream_windows(session, f"{base}/good.m3u8", WINDOW, STRIDE, topk=3, timeout=30)),
                         from_file)
            for name in ("local.m3u8", "notes.txt"):
                with pytest.raises(UserError, match=f"{name}: cannot open the stream"):
                    list(stream_windows(session, f"{base}/{name}", WINDOW, STRIDE, timeout=30))
        finally:
            httpd.shutdown()


def test_a_stream_that_changes_size_and_restarts_its_clock(served, session, tmp_path):
    """Two MPEG-TS recordings sent back to back as bytes (a sender restarting with another resolution): the
    timestamps go back 3 s and the frames grow from 48x32 to 64x40; every frame is read at the first size and the
    timeline goes on, so the windows are those of one 6 s video."""
    _, video = served
    second = str(tmp_path / "wide.mp4")
    write_long_video(second, [5, 4, 3, 2, 1, 0], 0.5, size=(64, 40), fps=8, keyframe_every=4)
    data = b""
    for path in (video, second):
        to_mpegts(path, str(tmp_path / "part.ts"))
        data += (tmp_path / "part.ts").read_bytes()
    listener = socket.create_server(("127.0.0.1", 0))

    def send():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(data)
        listener.close()

    threading.Thread(target=send, daemon=True).start()
    url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    windows = list(stream_windows(session, url, WINDOW, STRIDE, topk=3, timeout=30))
    assert [(w["start"], w["end"]) for w in windows] == [(round(a, 3), round(b, 3))
                                                        for a, b in window_spans(6.0, WINDOW, STRIDE)]
