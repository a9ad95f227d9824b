"""RFC 4978 COMPRESS=DEFLATE: raw DEFLATE (no zlib header) both ways, from
the octet after the tagged OK on.

A `Deflate` is the connection's codec (`Connection.codec`): input is inflated
only as far as there is room in the connection's buffer (MAX_BUFFER), the
rest stays compressed until the session has read what it holds, and reading
from the socket pauses meanwhile. So a decompression bomb costs no more
memory than plain input, and the session's line, literal and time limits see
the inflated octets as they would plain ones. Output is flushed
(Z_SYNC_FLUSH) at every write, so each reply reaches the client whole.
"""

from __future__ import annotations

import zlib

LEVEL = 1  # favours the event loop's CPU over the last percent of size
WBITS = -15  # raw DEFLATE, a 32 KB window


class CodecError(ValueError):
    """The client's compressed stream is corrupt: the connection is closed."""


class Deflate:
    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(WBITS)
        self._deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS)
        self._pending = b""  # compressed input not inflated yet

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def feed(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else bytes(data)

    def take(self, room: int) -> bytes:
        """Up to `room` inflated octets of what was fed."""
        if not self._pending or room <= 0:
            return b""
        if self._inflate.eof:  # the client ended its stream: nothing after it counts
            self._pending = b""
            raise CodecError("data after the end of the compressed stream")
        try:
            out = self._inflate.decompress(self._pending, room)
        except zlib.error as e:
            self._pending = b""
            raise CodecError(str(e)) from None
        self._pending = self._inflate.unconsumed_tail or self._inflate.unused_data
        return out

    def encode(self, data: bytes) -> bytes:
        return self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
