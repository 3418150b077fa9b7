"""The path sandbox: every name gives the file's bytes or a 4xx ApiError, never a file outside
the roots (not even while the tree changes under it), never a hint of where an outside link
leads, never a leaked fd."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import sandbox as sandbox_module
from server.errors import ApiError, clip
from server.sandbox import MAX_LINK_HOPS, open_in_roots, read_sandboxed


@pytest.fixture(autouse=True)
def no_fd_leaks(tmp_path: Path) -> Iterator[None]:
    """No descriptor left open on anything under the test's folder (descriptors of other
    things may come and go: threads and children that earlier tests left finishing)."""
    yield
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp_path)) or target.startswith(str(tmp_path.resolve())):
            held.append(target)
    assert not held, held


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.jpg").write_bytes(b"image")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "escape.jpg")
    os.symlink(tmp_path / "outside", root / "escape_dir")
    os.symlink(root / "sub" / "ok.jpg", root / "inside_link.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root.resolve()


def refused(name: object, roots: tuple[Path, ...], status: int, *, directory: bool = False
            ) -> ApiError:
    """The error reading `name` (opening it as a folder with directory=True) gives, checked
    for its status and for naming nothing outside the roots."""
    with pytest.raises(ApiError) as caught:
        if directory:
            os.close(open_in_roots(name, roots, directory=True))
        else:
            read_sandboxed(name, roots, 1000)
    error = caught.value
    assert error.status == status, error.message
    # The message may quote the client's own name (clipped to 80 characters): anything else
    # is a leak.
    leak = error.message.replace(str(name), "")
    if isinstance(name, str):
        leak = leak.replace(clip(name), "")
    assert "secret" not in leak and "/outside" not in leak, error.message
    return error


# ------------------------------------------------------------------ the cases the old tests held

@pytest.mark.parametrize("name, status", [
    ("sub/ok.jpg", 200), ("inside_link.jpg", 200), ("../secret.txt", 403),
    ("sub/../../secret.txt", 403), ("escape.jpg", 403), ("/etc/passwd", 403),
    ("sub", 400), ("pipe.jpg", 400), ("missing.jpg", 404), ("sub/ok.jpg\0.png", 400),
    ("/dev/zero", 403), ("", 400),
])
def test_path_sandbox(sandbox: Path, name: str, status: int) -> None:
    if status == 200:
        assert read_sandboxed(name, (sandbox,), 1000) == b"image"
        assert read_sandboxed(str(sandbox / name), (sandbox,), 1000) == b"image"
        return
    refused(name, (sandbox,), status)


def test_device_inside_a_root_is_not_read() -> None:
    # A root that contains a character device: refused as not a regular file, never read.
    for name in ("zero", "/dev/zero", "null"):
        assert "not a regular file" in refused(name, (Path("/dev"),), 400).message


def test_no_roots_means_filename_mode_is_off(sandbox: Path) -> None:
    assert "disabled" in refused("sub/ok.jpg", (), 403).message


# ------------------------------------------------------------------------------ the swap race

def swap_race(read: Callable[[str, tuple[Path, ...], int], bytes], root: Path,
              requests: int) -> Counter[str]:
    """Reads root/d/f.jpg `requests` times while a thread keeps swapping the folder root/d for
    root/link, a symlink to a folder outside holding an f.jpg of its own; counts the outcomes
    (the content read, or the error code)."""
    stop = threading.Event()
    swap_errors: list[BaseException] = []

    def swap() -> None:
        try:
            while not stop.is_set():
                os.rename(root / "d", root / "real")
                os.rename(root / "link", root / "d")  # d is the symlink now
                os.rename(root / "d", root / "link")
                os.rename(root / "real", root / "d")
        except BaseException as exc:  # reported by the main thread
            swap_errors.append(exc)

    outcomes: Counter[str] = Counter()
    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(requests):
            try:
                outcomes[read("d/f.jpg", (root,), 100).decode()] += 1
            except ApiError as error:
                assert 400 <= error.status < 500, error.message
                outcomes[error.code] += 1
    finally:
        stop.set()
        swapper.join()
    assert not swap_errors
    return outcomes


def make_swap_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.jpg").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", root / "link")
    return root.resolve()


def test_a_folder_swapped_for_a_symlink_is_never_followed(tmp_path: Path) -> None:
    outcomes = swap_race(read_sandboxed, make_swap_tree(tmp_path), requests=3000)
    assert outcomes["secret"] == 0, outcomes
    # Both states were seen, so the race was really run.
    assert outcomes["inside"] > 0 and outcomes["forbidden_path"] > 0, outcomes


# ---------------------------------------------------------------------------- names themselves

def test_a_trailing_slash_names_a_folder(sandbox: Path) -> None:
    for name in ("sub/ok.jpg/", "sub/ok.jpg/.", "inside_link.jpg/", "sub/.."):
        assert "names a folder" in refused(name, (sandbox,), 400).message
    # A file used as a folder further on is simply not there.
    assert "not a folder" in refused("sub/ok.jpg/x.jpg", (sandbox,), 404).message


def test_over_long_names_are_refused_with_a_clear_message(sandbox: Path) -> None:
    assert "255 bytes" in refused("a" * 300 + ".jpg", (sandbox,), 400).message
    assert "255 bytes" in refused("sub/" + "é" * 200, (sandbox,), 400).message  # 400 bytes
    assert "limit is 4096" in refused("a/" * 2500, (sandbox,), 400).message  # 5,000 bytes


def test_bad_values_are_refused(sandbox: Path) -> None:
    assert refused(None, (sandbox,), 400).code == "missing_field"
    assert refused(5, (sandbox,), 400).code == "invalid_field"
    assert "NUL" in refused("sub/ok.jpg\0", (sandbox,), 400).message
    assert "surrogate" in refused("\ud800.jpg", (sandbox,), 400).message


def test_dot_dot_is_lexical_and_stays_inside(sandbox: Path) -> None:
    for name in ("sub/../sub/ok.jpg", "./sub/./ok.jpg", "sub//ok.jpg",
                 "sub/nothing/../ok.jpg",  # lexical: 'nothing' is never looked up
                 f"{sandbox}/sub/../sub/ok.jpg", f"{sandbox}//sub/ok.jpg"):
        assert read_sandboxed(name, (sandbox,), 1000) == b"image", name
    for name in ("..", "sub/../..", f"{sandbox}/../secret.txt", f"{sandbox}/../../etc/passwd"):
        refused(name, (sandbox,), 403)


def test_a_sibling_sharing_the_roots_prefix_is_outside(sandbox: Path) -> None:
    sibling = sandbox.parent / (sandbox.name + "2")
    sibling.mkdir()
    (sibling / "f.jpg").write_bytes(b"secret")
    refused(str(sibling / "f.jpg"), (sandbox,), 403)
    os.symlink(sibling / "f.jpg", sandbox / "sibling.jpg")
    refused("sibling.jpg", (sandbox,), 403)


def test_deep_nesting(sandbox: Path) -> None:
    name = "d/" * 1000 + "f.jpg"  # 2,005 bytes, 1,001 components
    # Built and removed level by level: os.makedirs and shutil.rmtree (pytest's tmp_path
    # cleanup) recurse once per level, past Python's recursion limit.
    folder = str(sandbox)
    for _ in range(1000):
        folder += "/d"
        os.mkdir(folder)
    Path(folder, "f.jpg").write_bytes(b"deep")
    try:
        assert read_sandboxed(name, (sandbox,), 1000) == b"deep"
        refused("d/" * 1000 + "missing.jpg", (sandbox,), 404)
    finally:
        os.unlink(Path(folder, "f.jpg"))
        while folder != str(sandbox):
            os.rmdir(folder)
            folder = os.path.dirname(folder)


def test_size_limit(sandbox: Path) -> None:
    (sandbox / "big.jpg").write_bytes(b"x" * 1001)
    (sandbox / "exact.jpg").write_bytes(b"x" * 1000)
    assert "1001 bytes" in refused("big.jpg", (sandbox,), 413).message
    assert read_sandboxed("exact.jpg", (sandbox,), 1000) == b"x" * 1000


# -------------------------------------------------------------------------------------- links

def test_symlinks_inside_the_roots_are_followed(sandbox: Path) -> None:
    os.symlink("sub/ok.jpg", sandbox / "relative.jpg")
    os.symlink("../sub/ok.jpg", sandbox / "sub" / "up.jpg")
    os.symlink("sub", sandbox / "dirlink")
    os.symlink(".", sandbox / "self_dir")
    os.symlink("inside_link.jpg", sandbox / "chain.jpg")
    os.symlink("./" * 2000 + "sub/ok.jpg", sandbox / "long_target.jpg")  # 4,010 bytes
    for name in ("relative.jpg", "sub/up.jpg", "dirlink/ok.jpg", "self_dir/self_dir/sub/ok.jpg",
                 "chain.jpg", "long_target.jpg", "dirlink/../sub/ok.jpg"):
        assert read_sandboxed(name, (sandbox,), 1000) == b"image", name


def test_symlinks_leading_outside_are_refused(sandbox: Path) -> None:
    os.symlink("escape.jpg", sandbox / "b.jpg")
    os.symlink("b.jpg", sandbox / "a.jpg")  # a -> b -> escape -> outside
    os.symlink("../../secret.txt", sandbox / "sub" / "climb.jpg")
    os.symlink("/", sandbox / "slash")
    (sandbox.parent / "outside" / "f.jpg").write_bytes(b"secret")
    for name in ("a.jpg", "sub/climb.jpg", "escape_dir/f.jpg", "slash/etc/passwd"):
        assert "outside the allowed folders" in refused(name, (sandbox,), 403).message
    # A link to an outside file that does not exist says the same: nothing is revealed.
    os.symlink(sandbox.parent / "nothing.jpg", sandbox / "dangling_out.jpg")
    refused("dangling_out.jpg", (sandbox,), 403)
    os.symlink("sub/nothing.jpg", sandbox / "dangling_in.jpg")
    refused("dangling_in.jpg", (sandbox,), 404)


def test_symlink_loops_and_the_hop_limit(sandbox: Path) -> None:
    os.symlink("self.jpg", sandbox / "self.jpg")
    os.symlink("loop2", sandbox / "loop1")
    os.symlink("loop1", sandbox / "loop2")
    for name in ("self.jpg", "loop1", "loop1/x.jpg"):
        assert "symbolic links" in refused(name, (sandbox,), 400).message
    for hops in range(MAX_LINK_HOPS + 1):  # hop{i} -> hop{i+1}; the last one -> sub/ok.jpg
        os.symlink(f"hop{hops + 1}" if hops < MAX_LINK_HOPS else "sub/ok.jpg",
                   sandbox / f"hop{hops}")
    assert read_sandboxed("hop1", (sandbox,), 1000) == b"image"  # exactly 40 links
    refused("hop0", (sandbox,), 400)  # 41


def test_bad_link_targets_are_4xx(sandbox: Path) -> None:
    os.symlink("a" * 300, sandbox / "long_part.jpg")
    assert "too long" in refused("long_part.jpg", (sandbox,), 400).message
    os.symlink(("b" * 200 + "/") * 18, sandbox / "long_path")
    name = "long_path/" + ("c" * 200 + "/") * 4 + "f.jpg"  # 4,440 bytes once the link is read
    assert "once its symbolic links" in refused(name, (sandbox,), 400).message


# --------------------------------------------------------------------- non-regular files, roots

@contextmanager
def fails_if_it_blocks(seconds: float = 5) -> Iterator[None]:
    """A watchdog: a call that blocks is interrupted and fails instead of hanging the run."""
    def interrupt(signum: int, frame: object) -> None:
        raise TimeoutError("the call blocked")
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_is_refused_without_blocking(sandbox: Path, monkeypatch) -> None:
    with fails_if_it_blocks():
        assert "not a regular file" in refused("pipe.jpg", (sandbox,), 400).message
        # As if the FIFO were swapped in after the lstat: O_NONBLOCK keeps the open from
        # blocking, and the fstat of the opened fd refuses it.
        monkeypatch.setattr(sandbox_module, "_examine_last", lambda *args: None)
        assert "not a regular file" in refused("pipe.jpg", (sandbox,), 400).message
        assert "not a regular file" in refused("zero", (Path("/dev"),), 400).message


def test_several_roots(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        root.mkdir()
        (root / "both.jpg").write_bytes(root.name.encode())
    (second / "only_second.jpg").write_bytes(b"second")
    os.symlink(tmp_path / "secret.txt", first / "only_second.jpg.lnk")
    os.symlink(second / "only_second.jpg", first / "across.jpg")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", first / "linked.jpg")
    (second / "linked.jpg").write_bytes(b"second")
    roots = (first, second)
    assert read_sandboxed("both.jpg", roots, 100) == b"first"  # the first root wins
    assert read_sandboxed("only_second.jpg", roots, 100) == b"second"
    assert read_sandboxed("across.jpg", roots, 100) == b"second"  # a link into another root
    assert read_sandboxed(str(second / "both.jpg"), roots, 100) == b"second"
    # An escaping link in the first root does not hide the file in the second.
    assert read_sandboxed("linked.jpg", roots, 100) == b"second"
    refused("only_second.jpg.lnk", roots, 404)  # outside in one root, missing in the other
    refused("../second/both.jpg", roots, 403)  # a relative name never climbs out of its root


def test_folders_for_a_walker(sandbox: Path) -> None:
    os.symlink("sub", sandbox / "dirlink")
    for name in ("sub", "sub/", "dirlink", ".", str(sandbox)):
        fd = open_in_roots(name, (sandbox,), directory=True)
        try:
            with os.scandir(fd) as entries:
                names = {entry.name for entry in entries}
        finally:
            os.close(fd)
        assert "ok.jpg" in names or "sub" in names, name
    for name in ("sub/ok.jpg", "pipe.jpg", "inside_link.jpg"):
        assert "not a folder" in refused(name, (sandbox,), 400, directory=True).message
    refused("escape_dir", (sandbox,), 403, directory=True)
    refused("missing", (sandbox,), 404, directory=True)
    fd = open_in_roots("sub/ok.jpg", (sandbox,))
    try:
        assert os.read(fd, 100) == b"image"
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------- any name

@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["sub", "ok.jpg", "..", ".", "", "escape.jpg", "escape_dir",
                                 "inside_link.jpg", "pipe.jpg", "missing", "é", "\0", "a" * 256,
                                 "/etc", "dev"]), max_size=8),
       st.booleans(), st.booleans())
def test_any_name_gives_the_image_or_a_4xx(sandbox: Path, parts: list[str], absolute: bool,
                                            directory: bool) -> None:
    name = (f"{sandbox}/" if absolute else "") + "/".join(parts)
    try:
        if directory:
            os.close(open_in_roots(name, (sandbox,), directory=True))
        else:
            assert read_sandboxed(name, (sandbox,), 1000) == b"image"
    except ApiError as error:
        assert 400 <= error.status < 500 and len(error.message) < 400
