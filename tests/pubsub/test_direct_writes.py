"""
backpressure.DirectWriter: text frames written straight to a socket, as RFC
6455 frames them, and only while nothing else is waiting to be sent; and the
frames a publication's fan-out builds for them.
"""
import socket
import threading

import pytest

from pubsub.backpressure import DirectWriter
from pubsub.delivery import Fanout, Subscription
from pubsub.topics import Topic


class Transport:
    """The parts of Twisted's TCP transport that DirectWriter reads."""

    def __init__(self, sock):
        self.socket = sock
        self.disconnecting = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer = []
        self.written = []

    def write(self, data):
        self.written.append(data)


class Protocol:
    STATE_OPEN = 1

    def __init__(self, transport):
        self.transport = transport
        self.state = self.STATE_OPEN
        self._perMessageCompress = None


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


def read_frame(sock):
    """One unmasked frame from ``sock``: (first byte, payload)."""
    head = sock.recv(2, socket.MSG_WAITALL)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(sock.recv(2, socket.MSG_WAITALL), "big")
    elif length == 127:
        length = int.from_bytes(sock.recv(8, socket.MSG_WAITALL), "big")
    return head[0], sock.recv(length, socket.MSG_WAITALL)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_frames_of_every_length_class_read_back(pair, size):
    server, client = pair
    # Small buffers, so that the socket takes only a part of the larger frames.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport = Transport(server)
    writer = DirectWriter(Protocol(transport))
    text = "é" * (size // 2) + "x" * (size % 2)

    assert writer.write(text)
    if size == 300_000:
        assert transport.written, "the socket took the whole frame"
    # Where the socket took a part only, the rest went to Twisted's buffer,
    # which sends it next.
    server.setblocking(True)
    rest = threading.Thread(target=server.sendall, args=(b"".join(transport.written),))
    rest.start()
    first, payload = read_frame(client)
    rest.join(10)
    assert first == 0x81
    assert payload.decode() == text


@pytest.mark.parametrize(
    "change",
    [
        lambda protocol: setattr(protocol, "state", 2),
        lambda protocol: setattr(protocol, "_perMessageCompress", object()),
        lambda protocol: setattr(protocol.transport, "disconnecting", True),
        lambda protocol: protocol.transport._tempDataBuffer.append(b"x"),
        lambda protocol: setattr(protocol.transport, "dataBuffer", b"xy"),
    ],
    ids=["closing", "compressed", "disconnecting", "queued", "buffered"],
)
def test_nothing_is_written_past_what_waits_or_a_closed_socket(pair, change):
    server, client = pair
    protocol = Protocol(Transport(server))
    change(protocol)

    assert not DirectWriter(protocol).write("hello")
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)


def test_a_fanout_builds_each_ids_frame_once_per_publication(pair):
    server, client = pair
    topic = Topic.of("chat", {"room": "x"})
    first = '{"seq":7,"data":"x"}'
    second = '{"seq":8,"data":"y"}'
    a1, a2, b = (Subscription(id, topic, None) for id in ("a", "a", "b"))
    fanout = Fanout()

    assert fanout.seq_of(first) == 7
    shared = fanout.frame(a1, first)
    assert shared == ['{"op":"data","id":"a","seq":7,"data":"x"}', None]
    assert fanout.frame(a2, first) is shared
    assert fanout.frame(b, first)[0] == '{"op":"data","id":"b","seq":7,"data":"x"}'

    # The first direct write encodes the frame once for every writer of it.
    writer = DirectWriter(Protocol(Transport(server)))
    assert writer.write(shared[0], shared)
    wire = shared[1]
    assert wire == b"\x81" + bytes((len(shared[0]),)) + shared[0].encode()
    assert writer.write(shared[0], shared) and shared[1] is wire
    assert read_frame(client) == read_frame(client) == (0x81, shared[0].encode())

    # The next publication starts afresh.
    assert fanout.seq_of(second) == 8
    assert fanout.frame(a2, second)[0] == '{"op":"data","id":"a","seq":8,"data":"y"}'
    # A message other than the one being handed out is never served from it.
    assert fanout.frame(a2, first)[0] == '{"op":"data","id":"a","seq":7,"data":"x"}'

    # Past LIMIT distinct ids, frames are built but not kept.
    many = [Subscription(str(n), topic, None) for n in range(Fanout.LIMIT + 5)]
    for subscription in many:
        fanout.frame(subscription, second)
    assert len(fanout.frames) == Fanout.LIMIT
    last = many[-1]
    assert fanout.frame(last, second)[0].startswith('{"op":"data","id":"%s"' % last.id)

    # A large publication is not kept at all.
    large = '{"seq":9,"data":"%s"}' % ("z" * Fanout.MAX_LENGTH)
    assert fanout.seq_of(large) == 9
    assert fanout.frame(a1, large) is not fanout.frame(a2, large)
    assert fanout.message is None and not fanout.frames
