"""Limits on incoming msgpack frames, enforced on the raw bytes before anything is decoded.

msgpack's own ``max_buffer_size`` bounds only the bytes it has not parsed yet: a frame that
arrives in pieces is parsed piece by piece, its objects pile up inside the unpacker and the
frame as a whole can be any size. One byte of msgpack can also become a 56-byte Python
object (an empty array), so a frame within the byte limit can still cost 64 times its size.

:class:`FrameScanner` walks the structure of the byte stream, headers only (a string or
binary body is skipped by its length, never looked at), and keeps, for the frame being
received, its size in bytes, its depth and its element count. It stops at the first byte
that would pass a limit, so the caller can close the connection before handing the bytes
to the unpacker. It resumes across chunks, so each byte is looked at once, however the
frame is cut. A header that announces a body which cannot fit (a bin32 of 4 GiB) is
refused when the header arrives, before any of the body does.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FrameLimits", "FrameScanner"]

# Per first byte: (kind, header bytes after the first, fixed payload or count). Each kind a
# Final literal: compiled, a name bound by a tuple assignment is a module-dict lookup at every
# use, four per fed chunk on the hot path.
_SCALAR: Final = 0
_RAW: Final = 1
_ARRAY: Final = 2
_MAP: Final = 3
_BAD: Final = 4


def _table() -> list[tuple[int, int, int]]:
    t: list[tuple[int, int, int]] = [(_BAD, 0, 0)] * 256
    for b in range(0x00, 0x80):
        t[b] = (_SCALAR, 0, 0)
    for b in range(0xE0, 0x100):
        t[b] = (_SCALAR, 0, 0)
    for b in range(0x80, 0x90):
        t[b] = (_MAP, 0, b & 0x0F)
    for b in range(0x90, 0xA0):
        t[b] = (_ARRAY, 0, b & 0x0F)
    for b in range(0xA0, 0xC0):
        t[b] = (_RAW, 0, b & 0x1F)  # fixstr: length in the first byte
    t[0xC0] = t[0xC2] = t[0xC3] = (_SCALAR, 0, 0)
    # bin 8/16/32, ext 8/16/32 (length, then one type byte counted as payload), str 8/16/32
    t[0xC4], t[0xC5], t[0xC6] = (_RAW, 1, -1), (_RAW, 2, -1), (_RAW, 4, -1)
    t[0xC7], t[0xC8], t[0xC9] = (_RAW, 1, -2), (_RAW, 2, -2), (_RAW, 4, -2)
    t[0xD9], t[0xDA], t[0xDB] = (_RAW, 1, -1), (_RAW, 2, -1), (_RAW, 4, -1)
    t[0xCA], t[0xCB] = (_SCALAR, 4, 0), (_SCALAR, 8, 0)
    t[0xCC], t[0xCD], t[0xCE], t[0xCF] = (_SCALAR, 1, 0), (_SCALAR, 2, 0), (_SCALAR, 4, 0), (_SCALAR, 8, 0)
    t[0xD0], t[0xD1], t[0xD2], t[0xD3] = (_SCALAR, 1, 0), (_SCALAR, 2, 0), (_SCALAR, 4, 0), (_SCALAR, 8, 0)
    # fixext 1/2/4/8/16: a type byte and a fixed body
    t[0xD4], t[0xD5], t[0xD6], t[0xD7], t[0xD8] = (
        (_SCALAR, 2, 0), (_SCALAR, 3, 0), (_SCALAR, 5, 0), (_SCALAR, 9, 0), (_SCALAR, 17, 0),
    )
    t[0xDC], t[0xDD] = (_ARRAY, 2, -1), (_ARRAY, 4, -1)
    t[0xDE], t[0xDF] = (_MAP, 2, -1), (_MAP, 4, -1)
    return t


_T: Final = _table()
# The table's columns, each indexed by the first byte (one lookup per header in the scan).
_KINDS: Final = bytes(t[0] for t in _T)
_HLENS: Final = bytes(t[1] for t in _T)
_ARGS: Final = [t[2] for t in _T]


class FrameLimits:
    """What one frame may be: bytes, nesting depth, elements (all arrays and maps together,
    a map entry counting as two)."""

    __slots__ = ("max_bytes", "max_depth", "max_elements")

    def __init__(self, max_bytes: int, max_depth: int = 32, max_elements: int = 1_000_000) -> None:
        if max_bytes < 1 or max_depth < 1 or max_elements < 1:
            raise ValueError("frame limits must be positive")
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_elements = max_elements


class FrameScanner:
    """Feed it every chunk before the unpacker sees it; :meth:`feed` returns None while the
    stream keeps to the limits, or why it does not (and from then on the stream is dead)."""

    __slots__ = ("_depth", "_elems", "_limits", "_outer", "_skip", "_tail", "_top", "_used", "frames", "good_bytes")

    def __init__(self, limits: FrameLimits) -> None:
        self._limits = limits
        # Elements still to come in the innermost open array/map (``_top``, a native int
        # when compiled: counted down once per value) and in each one around it (``_outer``,
        # touched only when a container opens or closes); ``_depth`` of them are open, and
        # ``_outer[:_depth - 1]`` holds the counts around the innermost. The list only grows
        # (to the deepest nesting seen): a push and pop per container would free and allocate
        # its storage each time it empties, a dozen times a request.
        self._top = 0
        self._outer: list[int] = []
        self._depth = 0
        self._skip = 0  # body bytes of a str/bin/ext still to come
        self._used = 0  # bytes of the current frame so far
        self._elems = 0
        self._tail = b""  # a header cut by the end of the previous chunk
        self.frames = 0  # complete frames seen
        # After a refusal: how many bytes of the refused chunk end complete, valid frames
        # (the caller may still serve those before closing).
        self.good_bytes = 0

    @property
    def in_frame(self) -> bool:
        """A frame has begun and not ended (a slow sender may be holding it)."""
        return bool(self._used or self._tail)

    def feed(self, data: bytes) -> str | None:
        # The hot path of every connection: locals only, one table lookup per header, the end
        # of a value handled inline, and the byte limit checked where a frame ends, at a
        # str/bin header (which says how long its body is) and at the end of the chunk,
        # which is before the unpacker sees it. The bytes of the current frame are not
        # counted header by header: they are ``base + pos`` (``base`` moves when a frame ends).
        lim = self._limits
        max_bytes = lim.max_bytes
        carried = len(self._tail)
        if carried:
            data = self._tail + data
            self._used -= carried
            self._tail = b""
        n = len(data)
        last_end = 0
        pos = 0
        base = self._used
        elems = self._elems
        top = self._top
        depth = self._depth
        outer = self._outer
        frames = self.frames
        skip = self._skip
        if skip:
            if skip > n:
                self._skip = skip - n
                self._used = base + n
                return None
            pos = skip
            self._skip = 0
            while depth:
                top -= 1
                if top:
                    break
                depth -= 1
                if depth:
                    top = outer[depth - 1]
            else:
                if base + pos > max_bytes:
                    return self._refuse(self._too_big(base + pos), last_end, carried)
                frames += 1
                base = -pos
                elems = 0
                last_end = pos
        kinds, hlens, args = _KINDS, _HLENS, _ARGS
        scalar, raw, bad, a_map = _SCALAR, _RAW, _BAD, _MAP
        while pos < n:
            b = data[pos]
            if b < 0x80 or b == 0xC0:  # positive fixint, nil: no header to read
                pos += 1
            else:
                kind = kinds[b]
                if kind == bad:
                    return self._refuse(f"not msgpack (byte 0x{b:02x})", last_end, carried)
                end = pos + 1 + hlens[b]
                if end > n:
                    self._tail = data[pos:]  # the header is cut: kept for the next chunk
                    break
                if kind == scalar:
                    pos = end
                elif kind == raw:
                    arg = args[b]
                    # arg < 0: the length is in the header; an ext's type byte adds one. A
                    # one-byte length (bin 8, str 8: keys and short values) is read as it is.
                    if arg >= 0:
                        length = arg
                    elif end == pos + 2:
                        length = data[pos + 1] - arg - 1
                    else:
                        length = int.from_bytes(data[pos + 1 : end], "big") - arg - 1
                    stop = end + length
                    if base + stop > max_bytes:
                        return self._refuse(self._too_big(base + stop), last_end, carried)
                    if stop > n:
                        self._skip = stop - n
                        break
                    pos = stop
                else:
                    arg = args[b]
                    count = arg if arg >= 0 else int.from_bytes(data[pos + 1 : end], "big")
                    if kind == a_map:
                        count *= 2
                    pos = end
                    if count:
                        elems += count
                        if elems > lim.max_elements:
                            why = f"frame has over max_frame_elements ({lim.max_elements}) elements"
                            return self._refuse(why, last_end, carried)
                        if depth:
                            if depth > len(outer):
                                outer.append(top)
                            else:
                                outer[depth - 1] = top
                        top = count
                        depth += 1
                        if depth > lim.max_depth:
                            why = f"frame nested deeper than max_frame_depth ({lim.max_depth})"
                            return self._refuse(why, last_end, carried)
                        continue
            # A value ended: it may end its array/map, and so on up to the frame.
            while depth:
                top -= 1
                if top:
                    break
                depth -= 1
                if depth:
                    top = outer[depth - 1]
            else:
                if base + pos > max_bytes:
                    return self._refuse(self._too_big(base + pos), last_end, carried)
                frames += 1
                base = -pos
                elems = 0
                last_end = pos
        used = base + n
        self._used = used
        self._top = top
        self._depth = depth
        self._elems = elems
        self.frames = frames
        if used > max_bytes:
            return self._refuse(self._too_big(used), last_end, carried)
        return None

    def _refuse(self, why: str, last_end: int, carried: int) -> str:
        self.good_bytes = max(0, last_end - carried)
        return why

    def _too_big(self, size: int) -> str:
        return f"frame of {size}+ bytes is over max_frame_bytes ({self._limits.max_bytes})"
