"""Opening a client-named file inside the configured roots, race-free.

Threat model: the client names the path, and someone (the client or another local user) may
write inside a root at any moment: create files, folders and symlinks, and swap one for another
between any two of our system calls. What they must never get is the content of a file outside
the roots, or a hint of where a path outside the roots leads. A check-then-open design (resolve
the real path, compare it with the roots, open it) loses that race: a folder on the path swapped
for a symlink between the check and the open is followed by the open.

So, beyond the root itself, the kernel is never handed a path of more than one component and
never follows a symlink:

- every walk starts from a fresh fd of a root (O_DIRECTORY: a root is a folder; O_CLOEXEC, here
  and below: a worker the server forks never inherits the fd; the root's own path is trusted
  configuration, so following a link in it is fine);
- each component is opened relative to the fd of its parent (`dir_fd`) with O_NOFOLLOW, so a
  symlink there fails the open instead of being followed (a passing folder also gets
  O_DIRECTORY, and O_PATH where the OS has it, so a folder with search but no read permission
  still works as it did with realpath);
- '..' and '.' never reach the kernel: names and link targets are normalised lexically, and a
  relative name that climbs above its root is refused;
- a symlink met on the way is read (readlink) and its target resolved by the same rules: it must
  lie lexically inside a root, and is then walked again from that root's fd, at most 40 hops
  (the kernel's own limit), so links inside the roots work as they did before;
- the last component is lstat'ed before it is opened, so a FIFO or a device is refused without
  being opened at all; it is opened with O_NONBLOCK (a FIFO swapped in after the lstat cannot
  block the open) and O_NOCTTY, and the fstat of the opened fd is what decides.

A folder moved out of a root after we opened it is harmless: we hold its fd, never go up from
it, and what lies beneath it could have been put inside the root anyway. Out of scope: hard
links (indistinguishable from the file; fs.protected_hardlinks stops linking others' files) and
mounts (need root).

Every refusal is an ApiError with a 4xx code that quotes the client's name (never a link's
target); no OSError escapes. The functions block: the HTTP handler calls them through
run_in_executor. They keep no state, so any number of threads may call them at once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from .errors import ApiError, clip

# The configured roots: absolute real paths (service.filename_roots after Config.resolve).
Roots = Sequence[str | os.PathLike[str]]

MAX_LINK_HOPS = 40  # Linux's MAXSYMLINKS
PATH_MAX = 4096  # bytes, as the kernel counts them (Linux PATH_MAX)
NAME_MAX = 255  # bytes in one component

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_PATH: the fd only serves as dir_fd, so no read permission on the folder is needed.
_PASS_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A folder handed to the caller must be readable: os.scandir(fd) lists it.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_in_roots(name: object, roots: Roots, *, directory: bool = False) -> int:
    """An fd (the caller closes it) of the regular file, or with directory=True the folder,
    that `name` leads to inside one of `roots` (absolute real paths).

    '..' is resolved lexically. An absolute name must lie inside a root. A relative one never
    climbs above a root and is tried against each root in order: the first root where it leads
    to something (of any type) answers; if none does, the answer is file_not_found when some
    root lacked it, else forbidden_path.
    """
    if not roots:
        raise ApiError("forbidden_path", "file_type=filename is disabled: the server has no "
                       "service.filename_roots configured")
    path = _checked_name(name)
    root_parts = [[part for part in os.path.abspath(os.fspath(root)).split("/") if part]
                  for root in roots]
    outside = ApiError("forbidden_path", f"{clip(path)} is outside the allowed folders")
    if path.startswith("/"):
        located = _locate(_lexical_parts([], path), root_parts)
        if located is None:
            raise outside
        candidates = [located]
    else:
        parts = _lexical_parts([], path)
        if parts is None:
            raise outside
        candidates = [(index, parts) for index in range(len(roots))]
    if not directory and path.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise ApiError("invalid_field", f"{clip(path)} ends with '/', '.' or '..', so it "
                       "names a folder, not a file")
    misses: list[ApiError] = []
    for index, parts in candidates:
        try:
            return _resolve(path, root_parts, index, parts, directory)
        except ApiError as error:
            if error.code not in ("file_not_found", "forbidden_path"):
                raise
            misses.append(error)
    raise min(misses, key=lambda error: error.code != "file_not_found")


def read_sandboxed(name: object, roots: Roots, max_bytes: int) -> bytes:
    """The bytes of the regular file `name` leads to inside `roots` (see open_in_roots);
    too_large when it holds more than max_bytes, even if it grows while being read."""
    fd = open_in_roots(name, roots)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise ApiError("too_large", f"the file is {size} bytes; the limit is {max_bytes}")
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ApiError("invalid_field", f"cannot read {clip(str(name))}: "
                       f"{exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ApiError("too_large", f"the file is over {max_bytes} bytes, the limit")
    return data


def _checked_name(name: object) -> str:
    """`name` itself once it is a usable path (present, a string, not over the kernel's
    limits)."""
    if name is None or name == "":
        raise ApiError("missing_field", "file_type=filename needs the path in 'filename'")
    if not isinstance(name, str):
        raise ApiError("invalid_field", "filename must be a string")
    if "\0" in name:
        raise ApiError("invalid_field", "filename contains a NUL byte")
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError:
        raise ApiError("invalid_field", "filename is not valid Unicode (a lone surrogate)"
                       ) from None
    if len(encoded) > PATH_MAX:
        raise ApiError("invalid_field", f"filename is {len(encoded)} bytes long; the limit is "
                       f"{PATH_MAX}")
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ApiError("invalid_field", f"a part of {clip(name)} is over {NAME_MAX} bytes "
                       "long, the limit for one file or folder name")
    return name


def _lexical_parts(base: list[str], path: str) -> list[str] | None:
    """`path`'s components after `base`, '.' dropped and '..' taking one back; None when '..'
    climbs above the start."""
    parts = list(base)
    for part in path.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def _locate(parts: list[str] | None, root_parts: list[list[str]]
            ) -> tuple[int, list[str]] | None:
    """(index of the first root that holds the absolute path `parts`, the rest of it)."""
    if parts is not None:
        for index, root in enumerate(root_parts):
            if parts[:len(root)] == root:
                return index, parts[len(root):]
    return None


def _resolve(name: str, root_parts: list[list[str]], index: int, parts: list[str],
             directory: bool) -> int:
    """Walks `parts` from root `index`, restarting from a root after each symlink."""
    for _ in range(MAX_LINK_HOPS + 1):
        opened = _walk(name, "/" + "/".join(root_parts[index]), parts, directory)
        if isinstance(opened, int):
            return opened
        link, target = opened
        base = [] if target.startswith("/") else root_parts[index] + parts[:link]
        joined = _lexical_parts(base, target)
        if joined is not None:
            joined += parts[link + 1:]
            if len(os.fsencode("/" + "/".join(joined))) > PATH_MAX:
                raise ApiError("invalid_field", f"{clip(name)} is over {PATH_MAX} bytes "
                               "long once its symbolic links are followed")
        located = _locate(joined, root_parts)
        if located is None:
            raise ApiError("forbidden_path", f"{clip(name)} is outside the allowed folders")
        index, parts = located
    raise ApiError("invalid_field", f"{clip(name)} goes through more than {MAX_LINK_HOPS} "
                   "symbolic links (a loop?)")


def _walk(name: str, root: str, parts: list[str], directory: bool) -> int | tuple[int, str]:
    """The fd `parts` lead to from `root`, following no symlink; (k, target) when parts[k] is
    a symlink."""
    fd = _open_root(name, root)
    try:
        for k, part in enumerate(parts):
            final = k == len(parts) - 1
            if final:
                target = _examine_last(name, fd, part, directory)
                if target is not None:
                    return k, target
            try:
                child = os.open(part, (_FOLDER_FLAGS if directory else _FILE_FLAGS) if final
                                else _PASS_FLAGS, dir_fd=fd)
            except OSError as exc:
                # O_NOFOLLOW on a symlink: ELOOP, or ENOTDIR with O_DIRECTORY.
                target = _link_target(fd, part) if exc.errno in (errno.ELOOP,
                                                                 errno.ENOTDIR) else None
                if target is not None:
                    return k, target
                raise _refusal(name, exc) from None
            os.close(fd)
            fd = child
        _check_kind(name, os.fstat(fd).st_mode, directory)
        opened, fd = fd, -1
        return opened
    finally:
        if fd >= 0:
            os.close(fd)


def _open_root(name: str, root: str) -> int:
    try:
        return os.open(root, _ROOT_FLAGS)
    except OSError as exc:
        raise _refusal(name, exc) from None


def _examine_last(name: str, dir_fd: int, part: str, directory: bool) -> str | None:
    """The symlink target of the last component, or None once its type is checked: a FIFO or
    device is refused here without being opened."""
    try:
        mode = os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            return os.readlink(part, dir_fd=dir_fd)
    except OSError as exc:
        raise _refusal(name, exc) from None
    _check_kind(name, mode, directory)
    return None


def _link_target(dir_fd: int, part: str) -> str | None:
    try:
        return os.readlink(part, dir_fd=dir_fd)
    except OSError:  # not a symlink (EINVAL), or gone since
        return None


def _check_kind(name: str, mode: int, directory: bool) -> None:
    if directory and not stat.S_ISDIR(mode):
        raise ApiError("invalid_field", f"{clip(name)} is not a folder")
    if not directory and not stat.S_ISREG(mode):
        # A directory is not an image; a FIFO or a device would block or never end.
        raise ApiError("invalid_field", f"{clip(name)} is not a regular file")


def _refusal(name: str, exc: OSError) -> ApiError:
    """The client's error for a failed open or stat; only the client's own name is quoted."""
    quoted = clip(name)
    if exc.errno == errno.ENOENT:
        return ApiError("file_not_found", f"no such file: {quoted}")
    if exc.errno == errno.ENOTDIR:
        return ApiError("file_not_found", f"no such file: {quoted} (a part of the path is a "
                        "file, not a folder)")
    if exc.errno == errno.ENAMETOOLONG:
        return ApiError("invalid_field", f"a part of {quoted} is too long")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ApiError("forbidden_path", f"the server may not read {quoted}")
    if exc.errno == errno.ELOOP:
        return ApiError("invalid_field", f"{quoted} goes through too many symbolic links")
    return ApiError("invalid_field", f"cannot open {quoted}: "
                    f"{exc.strerror or type(exc).__name__}")
