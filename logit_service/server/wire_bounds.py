"""Bounds read off a request's raw bytes, before protobuf decodes them.

Decoding costs per submessage, not per byte: 3 MiB of empty `Sequence`s is 1.5 million messages, and a
request at the message limit decodes into several times its size. So every request is held to a byte
limit for its method, and a request that carries sequences is walked on the wire format (tags and
lengths only, nothing allocated) and refused as soon as it holds more sequences, token bytes or spans
than any valid request can. It owns these pre-decode checks only; what a decoded request means is
checked by `validation`.
"""

from __future__ import annotations

from dataclasses import dataclass

from logit_service.errors import InvalidRequest, RequestTooLarge
from logit_service.server.validation import MAX_SAMPLE_ID_BYTES

MAX_METADATA_REQUEST_BYTES = 64 << 10
"""Every method without sequences (publish, versions, leases, barrier): its largest valid request, 1024
leased versions and a 256-byte holder, is about 12 KiB."""

_SERVICE_PREFIX = "/logit_service.v1.LogitService/"
# Methods whose field 1 is `repeated Sequence`: ScoreRequest.sequences, SubmitSegmentsRequest.segments.
_SEQUENCE_METHODS = frozenset({"Score", "SubmitSegments"})
# Field numbers inside `Sequence`.
_SAMPLE_ID, _TOKEN_IDS, _SPANS = 1, 2, 3
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class RequestBounds:
    max_request_bytes: int
    """Bytes one Score or SubmitSegments request may carry."""
    max_sequences: int
    max_tokens: int

    def byte_limit(self, method: str) -> int:
        return self.max_request_bytes if _short(method) in _SEQUENCE_METHODS else MAX_METADATA_REQUEST_BYTES

    def check_size(self, method: str, raw: bytes) -> None:
        """Only the length: cheap enough for the event loop."""
        limit = self.byte_limit(method)
        if len(raw) > limit:
            setting = "max_request_bytes" if _short(method) in _SEQUENCE_METHODS else "max_metadata_request_bytes"
            raise RequestTooLarge(
                f"{len(raw)} bytes exceed the limit of {limit} bytes per {_short(method)} request",
                limit=setting, limit_value=limit, value=len(raw),
            )

    def check_counts(self, method: str, raw: bytes) -> None:
        """Sequences, token bytes and spans of a sequence-carrying request, counted on the wire and
        refused at the first one over its bound; so the walk itself is bounded by the limits, whatever
        the request's size."""
        if _short(method) not in _SEQUENCE_METHODS:
            return
        try:
            self._walk(raw)
        except _Malformed as e:
            raise InvalidRequest(f"the request bytes do not decode as a {_short(method)} request: {e}") from None

    def _walk(self, raw: bytes) -> None:
        sequences = spans = token_bytes = 0
        for number, wire_type, start, end in _fields(raw, 0, len(raw)):
            if number != 1 or wire_type != _LEN:  # anything else decodes as a scalar or unknown bytes
                continue
            sequences += 1
            if sequences > self.max_sequences:
                raise RequestTooLarge(
                    f"at least {sequences} sequences exceed the limit of {self.max_sequences} per request",
                    limit="max_sequences_per_request", limit_value=self.max_sequences, value=sequences,
                )
            for inner, inner_type, inner_start, inner_end in _fields(raw, start, end):
                if inner_type != _LEN:
                    continue
                size = inner_end - inner_start
                if inner == _TOKEN_IDS:
                    token_bytes += size
                    if token_bytes > 4 * self.max_tokens:
                        raise RequestTooLarge(
                            f"at least {token_bytes // 4} tokens exceed the limit of {self.max_tokens} per request",
                            limit="max_tokens_per_request", limit_value=self.max_tokens, value=token_bytes // 4,
                        )
                elif inner == _SPANS:
                    # Spans do not overlap and each scores a position: no valid request has more spans
                    # than its token limit.
                    spans += 1
                    if spans > self.max_tokens:
                        raise InvalidRequest(
                            f"the request holds more than {self.max_tokens} spans, more than its token limit"
                        )
                elif inner == _SAMPLE_ID and size > MAX_SAMPLE_ID_BYTES:
                    raise InvalidRequest(
                        f"sequence {sequences - 1}: sample_id is {size} bytes long; the limit is {MAX_SAMPLE_ID_BYTES}"
                    )


def _short(method: str) -> str:
    return method.removeprefix(_SERVICE_PREFIX)


def _fields(buf: bytes, pos: int, end: int):
    """(field number, wire type, value start, value end) of each field in buf[pos:end]."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire_type == _VARINT:
            start = pos
            _, pos = _varint(buf, pos, end)
        elif wire_type == _LEN:
            size, start = _varint(buf, pos, end)
            pos = start + size
        elif wire_type == _FIXED64:
            start, pos = pos, pos + 8
        elif wire_type == _FIXED32:
            start, pos = pos, pos + 4
        else:  # groups (3, 4) are proto2-only; this API never sends them
            raise _Malformed(f"wire type {wire_type} of field {number}")
        if pos > end:
            raise _Malformed(f"field {number} runs past the end of its message")
        yield number, wire_type, start, pos


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
