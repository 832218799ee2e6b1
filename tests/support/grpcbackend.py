"""A gRPC server for tests: ``python grpcbackend.py --port P --name NAME`` (grpcio,
h2c, a generic handler: no protoc; messages are raw bytes).

- ``/t.S/Unary``: answers the request bytes with ``NAME:`` in front; ``fail`` is
  answered INVALID_ARGUMENT with details ``bad input``; ``sleep`` sleeps 5 s first.
- ``/t.S/Stream``: server streaming: the request is a count N; N messages ``0``..``N-1``.
- ``/t.S/Bidi``: every message echoed back upper-cased, as it comes.
"""

from __future__ import annotations

import argparse
import time
from concurrent import futures

import grpc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="g")
    args = ap.parse_args()
    name = args.name.encode()

    def unary(req: bytes, ctx) -> bytes:
        if req == b"fail":
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        if req == b"sleep":
            time.sleep(5)
        ctx.set_trailing_metadata((("x-served-by", args.name),))
        return name + b":" + req

    def stream(req: bytes, ctx):
        for i in range(int(req)):
            yield str(i).encode()

    def bidi(reqs, ctx):
        for r in reqs:
            yield r.upper()

    same = dict(request_deserializer=None, response_serializer=None)
    handler = grpc.method_handlers_generic_handler("t.S", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **same),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, **same),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **same),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
