"""Error messages are cut before they travel: gRPC refuses received metadata over 16 KiB outright, and a
message travels twice (grpc-message and the rich status), so an overlong one would reach the caller as a
dropped stream instead of its status."""

from logit_common import errors, rich_status


def test_a_short_message_travels_unchanged():
    error = errors.InvalidRequest("temperature must be positive")
    assert rich_status.wire_message(error) == "temperature must be positive"
    assert rich_status.status_proto(error).message == "temperature must be positive"


def test_a_long_message_is_cut_and_says_how_much_is_missing():
    error = errors.ModelRejected("unknown model type; known: " + ", ".join(f"arch{i}" for i in range(3000)))
    wire = rich_status.wire_message(error)
    assert wire.startswith(error.message[: rich_status.MAX_WIRE_MESSAGE_CHARS])
    missing = len(error.message) - rich_status.MAX_WIRE_MESSAGE_CHARS
    assert wire.endswith(f"({missing} more characters in the server log)")
    details, _ = rich_status.trailing_metadata(error)
    assert rich_status.status_proto(error).message == wire  # the client checks the two agree
    assert len(details[1]) + len(wire.encode()) < 16 * 1024
