"""
A websocket client on a bare blocking socket, for tests that must misbehave
where a real client library would not let them: stop reading, send invalid
UTF-8, announce a frame larger than it sends.
"""
import base64
import json
import os
import socket
import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def handshake(port, *headers):
    """The bytes of a websocket handshake request to ``port``."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws/ HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient:
    def __init__(self, port, origin=None, receive_buffer=None, headers=()):
        self.sock = socket.socket()
        if receive_buffer:
            # Before connect, so that the window the server sees stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.buffer = b""
        self.handshake(port, origin or f"http://127.0.0.1:{port}", headers)

    def handshake(self, port, origin, headers):
        self.sock.sendall(handshake(port, f"Origin: {origin}", *headers))
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"handshake refused: {status!r}")

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the TCP connection")
        return data

    # --- sending ---

    def send_frame(self, opcode, payload, announced=None, masked=True):
        """
        One frame, masked as clients must unless ``masked`` is false;
        ``announced`` overrides the length in its header.
        """
        length = len(payload) if announced is None else announced
        bit = 0x80 if masked else 0
        head = bytes([0x80 | opcode])
        if length < 126:
            head += bytes([bit | length])
        elif length < 2**16:
            head += bytes([bit | 126]) + struct.pack("!H", length)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", length)
        if not masked:
            self.sock.sendall(head + payload)
            return
        mask = os.urandom(4)
        body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send_json(self, frame):
        self.send_frame(TEXT, json.dumps(frame).encode())

    # --- receiving ---

    def frame(self):
        """The next frame from the server as (opcode, payload)."""
        while True:
            parsed = self.parse()
            if parsed is not None:
                return parsed
            self.buffer += self.recv()

    def parse(self):
        if len(self.buffer) < 2:
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(self.buffer) < 4:
                return None
            (length,) = struct.unpack("!H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            if len(self.buffer) < 10:
                return None
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            offset = 10
        if len(self.buffer) < offset + length:
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    def messages(self, quiet=1.0):
        """
        Decoded text frames until the server closes, or sends nothing for
        ``quiet`` seconds; returns them and the close code (None if quiet,
        1006 if the TCP connection ended without a close frame). Pings are
        answered.
        """
        frames = []
        self.sock.settimeout(quiet)
        try:
            while True:
                opcode, payload = self.frame()
                if opcode == CLOSE:
                    return frames, struct.unpack("!H", payload[:2])[0]
                if opcode == PING:
                    self.send_frame(PONG, payload)
                elif opcode == TEXT:
                    frames.append(json.loads(payload))
        except TimeoutError:
            return frames, None
        except ConnectionError:
            return frames, 1006
        finally:
            self.sock.settimeout(10)

    def close(self):
        self.sock.close()
