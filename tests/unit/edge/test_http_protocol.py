"""The edge's HTTP protocol (`services/ingest/http_protocol.py`): a response's head and body leave in one write,
and every byte still leaves, in order, whatever the response is (HEAD, streamed, closed, pipelined)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from services.ingest.http_protocol import OneWriteHttpToolsProtocol, OneWriteTransport

pytestmark = pytest.mark.unit


class RecordingTransport(asyncio.Transport):
    """A socket's transport as uvicorn sees it, recording each write (one write is one send() system call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)


async def _answer_json(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"admitted":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _serve(protocol_class: type[HttpToolsProtocol], app: Any, request: bytes) -> RecordingTransport:
    """`request` (one or more pipelined requests) through `protocol_class` serving `app`, until answered."""
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={},
                              _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(200):  # the app's tasks, and the turn that ends a held head
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


GET = b"GET /v1/quota HTTP/1.1\r\nhost: edge\r\n\r\n"


async def test_a_response_head_and_body_leave_in_one_write() -> None:
    transport = await _serve(OneWriteHttpToolsProtocol, _answer_json, GET)

    assert len(transport.writes) == 1
    assert transport.sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.sent.endswith(b'\r\n\r\n{"admitted":true}')


async def test_uvicorn_alone_sends_them_in_two_writes() -> None:
    # what the protocol changes: the same answer through uvicorn's own protocol
    transport = await _serve(HttpToolsProtocol, _answer_json, GET)

    assert len(transport.writes) == 2
    assert transport.sent == (await _serve(OneWriteHttpToolsProtocol, _answer_json, GET)).sent


async def test_pipelined_requests_are_answered_in_order_one_write_each() -> None:
    transport = await _serve(OneWriteHttpToolsProtocol, _answer_json, GET * 3)

    assert len(transport.writes) == 3
    assert transport.sent.count(b"HTTP/1.1 200 OK") == 3
    assert all(write.endswith(b'{"admitted":true}') for write in transport.writes)


async def test_a_head_answer_without_a_body_write_still_leaves_at_the_end_of_the_turn() -> None:
    transport = await _serve(OneWriteHttpToolsProtocol, _answer_json, b"HEAD /v1/quota HTTP/1.1\r\nhost: edge\r\n\r\n")

    assert transport.sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.sent.endswith(b"\r\n\r\n")
    assert b"admitted" not in transport.sent


async def test_a_streamed_response_leaves_whole_and_in_order() -> None:
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the head has been held past a turn of the loop by now
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"second"})

    transport = await _serve(OneWriteHttpToolsProtocol, stream, GET)

    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")  # went alone: nothing followed
    assert transport.sent.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")


async def test_a_closing_connection_sends_its_held_head_before_closing() -> None:
    transport = RecordingTransport()
    wrapped = OneWriteTransport(transport, asyncio.get_running_loop())

    wrapped.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
    wrapped.close()

    assert transport.writes == [b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"]
    assert transport.closed
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left to send
    assert len(transport.writes) == 1


async def test_bytes_that_only_look_like_a_head_keep_their_order() -> None:
    transport = RecordingTransport()
    wrapped = OneWriteTransport(transport, asyncio.get_running_loop())

    wrapped.write(b"some body, ")
    wrapped.write(b"HTTP/ in a body")
    wrapped.writelines([b", and ", b"more"])

    assert transport.sent == b"some body, HTTP/ in a body, and more"
    assert wrapped.get_extra_info("sockname") == ("127.0.0.1", 8000)  # the rest is the socket's transport
