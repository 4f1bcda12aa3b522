"""Seeded fuzzing of the inputs `ila predict --window` and folder scans take from users: window/stride/duration/
frame values (0, negatives, NaN, inf, tiny, huge, wrong types) through `check_window_flags`, `window_spans` and
`window_frames`, and random folder trees with links (self, mutual, to the scan's root, to / and to parents, to
files, dangling) through `find_videos`, `video_files` and `read_class_folders`. Every outcome is a correct result
or a one-line UserError, each case within a measured time bound."""
import math
import os
import re
import time

import numpy as np

from ila.data.annotations import VIDEO_EXTENSIONS
from ila.data.decode import IMAGE_EXTENSIONS
from ila.data.folders import find_videos, read_class_folders
from ila.engine.predict import check_window_flags, video_files
from ila.engine.session import MAX_WINDOWS, MIN_WINDOW_SECONDS, window_frames, window_spans
from ila.errors import UserError

CASE_SECONDS = 0.5                 # each case's bound (the slowest build a full MAX_WINDOWS list: milliseconds)
SPECIAL = [0.0, -0.0, -1.0, -1e-9, math.nan, math.inf, -math.inf, 5e-324, 1e-300, 1e-9, 1e-7, 5e-4, 0.000999,
           0.001, 0.0010001, 1 / 30, 0.04, 0.5, 1, 2, 3, 4.5, 8, 60, 3600, 1e6, 1e12, 1e300, 1.7976931348623157e308]
ODD = [True, "4", None, np.float32(2.5), np.int64(3), np.nan, 10 ** 400, -(10 ** 400), 7]


def value(rng):
    """A seconds value as users and files give them: special, random over 24 decades (some negative), or odd."""
    r = rng.random()
    if r < 0.45:
        return SPECIAL[rng.integers(len(SPECIAL))]
    if r < 0.93:
        v = float(10 ** rng.uniform(-12, 12))
        return -v if rng.random() < 0.1 else v
    return ODD[rng.integers(len(ODD))]


def realistic(rng, low=0.02, high=120.0):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def finite(v):
    """`v` as a float when it is a finite real number, else None."""
    if not number(v):
        return None
    try:
        v = float(v)
    except OverflowError:                          # an int past float's range
        return None
    return v if math.isfinite(v) else None


def seconds_ok(v, frame=0.0):
    v = finite(v)
    return v is not None and v >= MIN_WINDOW_SECONDS and v >= frame * (1 - 1e-9)


def one_line(error):
    text = str(error)
    return text and "\n" not in text and len(text) < 400


def timed(fn, *args):
    start = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - start
    except UserError as e:
        return None, e, time.perf_counter() - start


# ------------------------------------------------------------------------------------------- window values

def test_window_flags_fuzz():
    rng = np.random.default_rng(20240601)
    outcomes = {"ok": 0, "refused": 0}
    for case in range(150):
        window = None if rng.random() < 0.08 else value(rng)
        stride = None if rng.random() < 0.3 else value(rng)
        got, error, seconds = timed(check_window_flags, window, stride)
        assert seconds < CASE_SECONDS, (case, window, stride, seconds)
        if window is None:
            expect = stride is None
        else:
            expect = seconds_ok(window) and seconds_ok(window if stride is None else stride)
        if expect:
            assert error is None, (case, window, stride, error)
            assert got == ((None, None) if window is None else (window, window if stride is None else stride))
            outcomes["ok"] += 1
        else:
            assert error is not None and one_line(error), (case, window, stride, got)
            assert "--window" in str(error) or "--stride" in str(error)
            outcomes["refused"] += 1
    assert outcomes["ok"] >= 20 and outcomes["refused"] >= 20, outcomes


def expected_count(duration, window, stride):
    """The windows `window_spans` should give (inf: more than can be listed), from the spec, not the code."""
    if duration <= window:
        return 1
    steps = (duration - window) / stride
    if not steps < MAX_WINDOWS:
        return math.inf
    count = int(steps + 1e-9) + 1
    return count + ((count - 1) * stride + window < duration - 1e-6)


def test_window_spans_fuzz():
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "frame": 0, "count": 0, "other": 0}
    for case in range(170):
        kind = rng.random()
        if kind < 0.6:                              # a plausible video: n frames at some rate, plausible flags
            fps = realistic(rng, 0.5, 240)
            n = int(np.exp(rng.uniform(0, np.log(1e6))))
            duration, frame = n / fps, 1 / fps
            window = realistic(rng, 0.01, 60) if rng.random() < 0.8 else value(rng)
            stride = realistic(rng, 0.01, 60) if rng.random() < 0.8 else value(rng)
        else:                                       # anything: values, and a frame from any fps (0, nan, -1, ...)
            duration, window, stride = value(rng), value(rng), value(rng)
            fps = value(rng)
            rate = finite(fps)
            frame = fps if rate is None else math.inf if rate == 0 else 1 / rate   # 0 fps: an endless frame
        spans, error, seconds = timed(window_spans, duration, window, stride, frame)
        assert seconds < CASE_SECONDS, (case, duration, window, stride, frame, seconds)
        valid = ((finite(duration) or 0) > 0 and finite(frame) is not None and frame >= 0
                 and seconds_ok(window, frame) and seconds_ok(stride, frame))
        count = expected_count(float(duration), float(window), float(stride)) if valid else None
        where = (case, duration, window, stride, frame)
        if valid and count <= MAX_WINDOWS:
            assert error is None, (*where, error)
            assert len(spans) == count and 1 <= len(spans) <= MAX_WINDOWS, where
            assert spans[0][0] == 0 and abs(spans[-1][1] - duration) <= 1e-6 + 1e-12 * duration, where
            width = min(window, duration)
            for (s, e), (s2, _) in zip(spans, spans[1:] + [(math.inf, 0)]):
                assert 0 <= s < e <= duration + 1e-6 + 1e-9 * duration, (*where, s, e)
                assert abs((e - s) - width) <= 1e-9 * max(1.0, duration), (*where, s, e)
                assert s2 > s, where
            outcomes["ok"] += 1
            continue
        assert error is not None and one_line(error), (*where, spans if spans is None else len(spans))
        message = str(error)
        if valid:                                   # too many windows: the cap and a stride that fits are named
            assert f"more than the {MAX_WINDOWS:,} allowed per video; use a larger --stride (" in message, message
            fits = float(re.search(r"larger --stride \(([^ ]+) or more\)", message).group(1))
            again, error2, seconds = timed(window_spans, duration, window, fits, frame)
            assert error2 is None and len(again) <= MAX_WINDOWS and seconds < CASE_SECONDS, (*where, fits, error2)
            outcomes["count"] += 1
        elif "shorter than one frame" in message:   # the minimum named is itself accepted
            least = float(re.search(r"use --(?:window|stride) ([^ ]+) or more", message).group(1))
            assert seconds_ok(least, frame), (where, message)
            outcomes["frame"] += 1
        else:
            outcomes["other"] += 1
    assert min(outcomes.values()) >= 5, outcomes


def random_times(rng):
    """Frame times of a variable-frame-rate video: runs at different rates, repeated timestamps, long gaps."""
    n = int(rng.integers(1, 400))
    steps = rng.choice([1 / 30, 1 / 25, 1 / 60, 0.5, 2.0, 0.0, 1e-4], size=n - 1,
                       p=[0.3, 0.2, 0.15, 0.1, 0.05, 0.1, 0.1]) * rng.uniform(0.8, 1.2, size=n - 1)
    times = np.concatenate([[0.0], np.cumsum(steps)])
    positive = np.diff(times)[np.diff(times) > 0]
    return times, float(times[-1] + (positive[-1] if len(positive) else 1 / 25))


def test_window_frames_fuzz():
    rng = np.random.default_rng(11)
    cases = 0
    for case in range(60):
        times, duration = random_times(rng)
        frame = duration / len(times)
        window = max(frame, MIN_WINDOW_SECONDS) * float(rng.choice([1, 1.5, 10, 1000]))
        stride = max(frame, MIN_WINDOW_SECONDS) * float(rng.choice([1, 2, 7, 500]))
        start = time.perf_counter()
        spans = window_spans(duration, window, stride, frame)
        tol = 1e-9 * max(1.0, duration)
        for s, e in [spans[i] for i in rng.choice(len(spans), size=min(len(spans), 40), replace=False)]:
            for t in (1, 3, 8):
                picked = window_frames(times, s, e, t)
                assert len(picked) == t and picked.dtype == np.int64, (case, s, e)
                assert np.all((0 <= picked) & (picked < len(times))) and np.all(np.diff(picked) >= 0), (case, s, e)
                inside = np.flatnonzero((times >= s - tol) & (times < e - tol))
                if len(inside):
                    assert set(picked.tolist()) <= set(inside.tolist()), (case, s, e, picked, inside)
                else:                               # the frame on screen at the window's start
                    assert set(picked.tolist()) == {int(np.searchsorted(times, s + tol, side="right") - 1)}
        assert time.perf_counter() - start < CASE_SECONDS, case
        cases += 1
    assert cases == 60


# ------------------------------------------------------------------------------------------- folder trees with links

def build_tree(base, rng):
    """A random tree under base/root (folders, videos, other files, hidden ones, frame folders) and base/outside,
    with links anywhere: '.', '..', '../..', the root, '/', folders, files, missing targets, themselves."""
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "o.mp4").write_bytes(b"v")
    dirs = [root, outside]
    for i in range(int(rng.integers(0, 7))):
        d = dirs[rng.integers(len(dirs))] / (f".h{i}" if rng.random() < 0.1 else f"d{i}")
        d.mkdir()
        dirs.append(d)
    files = []
    for d in dirs:
        for k in range(int(rng.integers(0, 4))):
            name = ["v{}.mp4", "v{}.mkv", "v{}.WEBM", "notes{}.txt", ".hidden{}.mp4"][rng.integers(5)].format(k)
            (d / name).write_bytes(b"v")
            files.append(d / name)
    frame_dirs = []
    for i in range(int(rng.integers(0, 3))):
        f = dirs[rng.integers(len(dirs))] / f"frames{i}"
        f.mkdir()
        for k in range(int(rng.integers(1, 4))):
            (f / f"{k:03d}{['.png', '.jpg', '.JPEG'][rng.integers(3)]}").write_bytes(b"")
        frame_dirs.append(f)
    targets = [lambda d: ".", lambda d: "..", lambda d: "../..", lambda d: str(root), lambda d: "/",
               lambda d: str(outside), lambda d: str(base), lambda d: "missing",
               lambda d: os.path.relpath(dirs[rng.integers(len(dirs))], d),
               lambda d: str(dirs[rng.integers(len(dirs))]),
               lambda d: os.path.relpath(frame_dirs[rng.integers(len(frame_dirs))], d) if frame_dirs else "..",
               lambda d: str(files[rng.integers(len(files))]) if files else "missing.mp4"]
    for k in range(int(rng.integers(0, 8))):
        d = dirs[rng.integers(len(dirs))]
        name = f"l{k}" + (".mp4" if rng.random() < 0.3 else "")
        if rng.random() < 0.08:
            os.symlink(name, d / name)                 # a link to itself
        else:
            os.symlink(targets[rng.integers(len(targets))](d), d / name)
    return root


def expected_identities(root):
    """What a scan of root must list, as identities (the real folder and name of a file; the real path of a frame
    folder), found independently: a breadth-first walk over real paths, each real folder once, never entering
    root or a folder holding it again."""
    top = os.path.realpath(root)
    holders, path = {top}, top
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        holders.add(path)
    seen, queue, ids = {top}, [top], set()
    while queue:
        here = queue.pop(0)
        names = [n for n in os.listdir(here) if not n.startswith(".")]
        folders = [n for n in names if os.path.isdir(os.path.join(here, n))]
        others = [n for n in names if n not in folders]
        if here != top and any(n.lower().endswith(IMAGE_EXTENSIONS) for n in others):
            ids.add(here)
            continue
        ids |= {(here, n) for n in others if n.lower().endswith(VIDEO_EXTENSIONS)}
        for n in folders:
            real = os.path.realpath(os.path.join(here, n))
            if real not in seen and real not in holders:
                seen.add(real)
                queue.append(real)
    return ids


def identity(path):
    if os.path.isdir(path):
        return os.path.realpath(path)
    return os.path.realpath(os.path.dirname(path)), os.path.basename(path)


def test_folder_trees_with_links_fuzz(tmp_path):
    rng = np.random.default_rng(3)
    links = 0
    for case in range(100):
        base = tmp_path / f"case{case}"
        base.mkdir()
        root = build_tree(base, rng)
        links += sum(1 for _, ds, fs in os.walk(base) for n in ds + fs if os.path.islink(os.path.join(_, n)))
        found, error, seconds = timed(find_videos, str(root))
        assert error is None and seconds < CASE_SECONDS, (case, error, seconds)
        assert found == sorted(found) and len(found) == len(set(map(identity, found))), (case, found)
        assert set(map(identity, found)) == expected_identities(root), (case, found)
        listed, error, seconds = timed(video_files, [str(root)])
        assert seconds < CASE_SECONDS, (case, seconds)
        if found:
            assert error is None and listed == found, (case, error)
        else:
            assert error is not None and one_line(error) and "holds no video files" in str(error), case
        annotations, error, seconds = timed(read_class_folders, str(root))
        assert seconds < CASE_SECONDS, (case, seconds)
        if error is not None:
            assert one_line(error), (case, error)
        else:
            classes = annotations.class_names
            assert sum(len(find_videos(str(root / c))) for c in classes) == len(annotations.samples), case
            assert all(os.path.realpath(root / c) != os.path.realpath(root) for c in classes), case
    assert links >= 200, links
