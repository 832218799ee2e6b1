"""HTTP/1.1, sans-IO: bytes in, parsed heads and body pieces out; heads and
chunks out to the wire.  One module per step of a message's life:

- ``messages``: ``ProtocolError``, ``IncompleteBody``, ``Limits``, ``Request``,
  ``Response``, ``Framing`` and its constants (the data types);
- ``heads``: ``find_head_end``, ``parse_request_head``, ``parse_response_head``
  (strict RFC 9112 validation: reject, never guess);
- ``targets``: request-target forms, ``split_host``, ``split_url``;
- ``framing``: ``request_body_framing``, ``response_body_framing`` (RFC 9112 6.3);
- ``decoders``: ``make_decoder`` and the body decoders (chunked, length, close);
- ``serialize``: ``serialize_request_head`` (``request_head`` of ``field_lines``),
  ``serialize_response_head``, ``encode_chunk``, ``encode_last_chunk``, ``reason_phrase``;
- ``connection``: ``connection_tokens``, ``keep_alive``, ``wants_keep_alive``;
- ``grammar``: the compiled patterns the others match with.

Each module's docstring is its part of the contract.  Import from the module
that holds a name.
"""

# The package's face for forkproxy.net, which reads ``http1.<name>``: the same
# objects as in the modules above, so a lookup costs one attribute read.
from .connection import connection_tokens, keep_alive, wants_keep_alive  # noqa: F401
from .decoders import (BodyDecoder, ChunkedDecoder, CloseDecoder, LengthDecoder,  # noqa: F401
                       NoBodyDecoder, make_decoder)
from .framing import request_body_framing, response_body_framing  # noqa: F401
from .heads import (REMEMBERED_HEAD_SIZE, find_head_end, parse_request_head,  # noqa: F401
                    parse_response_head)
from .messages import (CHUNKED, DEFAULT_LIMITS, KNOWN_CODINGS, NO_BODY, UNTIL_CLOSE,  # noqa: F401
                       Framing, IncompleteBody, Limits, ProtocolError, Request, Response)
from .serialize import (encode_chunk, encode_last_chunk, field_lines,  # noqa: F401
                        reason_phrase, request_head, serialize_request_head,
                        serialize_response_head)
from .targets import split_host, split_url  # noqa: F401
