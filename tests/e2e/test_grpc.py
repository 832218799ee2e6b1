"""gRPC through forkproxy: a grpcio client, forkproxy (a plain listener with
``http2 = true``, a pool with ``protocol = "h2c"``), a grpcio server (a generic
handler, bytes in and out): unary, server streaming, bidi streaming, the
status and details of an error, trailing metadata, deadlines, a dead server."""

from __future__ import annotations

import pytest

from support.configs import one_pool
from support.h2servers import GrpcBackend
from support.procs import free_port

grpc = pytest.importorskip("grpc")


@pytest.fixture
def grpc_site(tmp_path, forkproxy_factory):
    backend = GrpcBackend("g1", tmp_path / "grpc")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [backend.addr], pool_extra='protocol = "h2c"\n'
                                    'read_timeout = "30s"', listener_extra="http2 = true"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield backend, fp, channel
    finally:
        channel.close()
        backend.stop()


def _calls(channel):
    same = dict(request_serializer=None, response_deserializer=None)
    return (channel.unary_unary("/t.S/Unary", **same),
            channel.unary_stream("/t.S/Stream", **same),
            channel.stream_stream("/t.S/Bidi", **same))


def test_unary_and_streaming_calls(grpc_site):
    _, _, channel = grpc_site
    unary, stream, bidi = _calls(channel)
    reply, call = unary.with_call(b"ping", timeout=10)
    assert reply == b"g1:ping"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-served-by", "g1") in tuple(call.trailing_metadata())
    for _ in range(20):  # streams of one connection, again and again
        assert unary(b"x" * 1000, timeout=10) == b"g1:" + b"x" * 1000
    assert list(stream(b"50", timeout=10)) == [str(i).encode() for i in range(50)]
    assert list(bidi(iter([b"a", b"bc", b"def"]), timeout=10)) == [b"A", b"BC", b"DEF"]
    big = b"z" * 2_000_000  # a message larger than every window
    assert unary(big, timeout=20) == b"g1:" + big


def test_error_status_and_details_reach_the_client(grpc_site):
    _, _, channel = grpc_site
    unary, _, _ = _calls(channel)
    with pytest.raises(grpc.RpcError) as info:
        unary(b"fail", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "bad input"
    assert unary(b"after", timeout=10) == b"g1:after"  # the connection is fine


def test_deadline_exceeded_without_a_hang(grpc_site):
    _, _, channel = grpc_site
    unary, _, _ = _calls(channel)
    with pytest.raises(grpc.RpcError) as info:
        unary(b"sleep", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert unary(b"next", timeout=10) == b"g1:next"


def test_killed_backend_is_unavailable_not_a_hang(grpc_site):
    backend, _, channel = grpc_site
    unary, _, _ = _calls(channel)
    assert unary(b"up", timeout=10) == b"g1:up"
    backend.stop()
    with pytest.raises(grpc.RpcError) as info:
        unary(b"down", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bidi_call_that_waits_for_each_answer(grpc_site):
    import queue
    _, _, channel = grpc_site
    _, _, bidi = _calls(channel)
    q: queue.Queue = queue.Queue()

    def requests():
        while (item := q.get()) is not None:
            yield item

    replies = bidi(requests(), timeout=10)
    for word in (b"one", b"two", b"three"):
        q.put(word)
        assert next(replies) == word.upper()  # each answer before the next message
    q.put(None)
    assert list(replies) == []
