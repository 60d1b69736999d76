#!/usr/bin/env python3
"""HTTP/2 a CRI server must survive, from python-hyper's hpack and hyperframe (not ours).

`h2_adversarial.py SOCKET` opens one connection and sends gRPC calls whose header blocks use
what real encoders do and h2's authority check trips over: the socket path as :authority,
Huffman-coded literals, dynamic-table entries reused across requests (added by requests,
by request trailers and by a stream the server resets), table size updates, padding, and
blocks split over CONTINUATION frames every few bytes, mid-string. It prints one JSON line per
call: {"name", "path", "stream", "grpc_status", "reset", "body": hex}.
"""
import json
import socket
import sys

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              RstStreamFrame, SettingsFrame)

RT = "/runtime.v1.RuntimeService/"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def grpc_frame(msg=b""):
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(30)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.next_stream = 1
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def headers(self, path, authority, extra=()):
        h = [(":method", "POST"), (":scheme", "http"), (":path", path)]
        if authority is not None:
            h.append((":authority", authority))
        h += [("content-type", "application/grpc"), ("te", "trailers"),
              ("user-agent", "grpc-python-adversarial/1")]
        return h + list(extra)

    def send_headers(self, stream, block, end_stream, pad=0, split=0):
        flags = set()
        if end_stream:
            flags.add("END_STREAM")
        if split:
            parts = [block[i:i + split] for i in range(0, len(block), split)]
        else:
            parts = [block]
        first = HeadersFrame(stream, parts[0], flags=flags)
        if pad:
            first.flags.add("PADDED")
            first.pad_length = pad
        if len(parts) == 1:
            first.flags.add("END_HEADERS")
        out = first.serialize()
        for i, p in enumerate(parts[1:], start=1):
            c = ContinuationFrame(stream, p)
            if i == len(parts) - 1:
                c.flags.add("END_HEADERS")
            out += c.serialize()
        self.sock.sendall(out)

    def call(self, path, authority, body=b"", pad=0, split=0, trailers=None, extra=()):
        stream = self.next_stream
        self.next_stream += 2
        block = self.enc.encode(self.headers(path, authority, extra), huffman=True)
        self.send_headers(stream, block, end_stream=False, pad=pad, split=split)
        data = DataFrame(stream, grpc_frame(body))
        if trailers is None:
            data.flags.add("END_STREAM")
            self.sock.sendall(data.serialize())
        else:
            self.sock.sendall(data.serialize())
            tblock = self.enc.encode(trailers, huffman=True)
            self.send_headers(stream, tblock, end_stream=True, split=split)
        return stream

    def read_frame(self):
        while len(self.buf) < 9:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
        while len(self.buf) < 9 + length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        frame.parse_body(memoryview(self.buf[9:9 + length]))
        self.buf = self.buf[9 + length:]
        return frame

    def answers(self, streams):
        res = {s: {"grpc_status": None, "reset": None, "body": b""} for s in streams}
        pending = set(streams)
        while pending:
            f = self.read_frame()
            if f is None:
                break
            if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
            elif isinstance(f, HeadersFrame) or isinstance(f, ContinuationFrame):
                for k, v in self.dec.decode(f.data):
                    if k == "grpc-status" and f.stream_id in res:
                        res[f.stream_id]["grpc_status"] = int(v)
                if "END_STREAM" in f.flags:
                    pending.discard(f.stream_id)
            elif isinstance(f, DataFrame):
                if f.stream_id in res:
                    res[f.stream_id]["body"] += f.data
                if "END_STREAM" in f.flags:
                    pending.discard(f.stream_id)
            elif isinstance(f, RstStreamFrame):
                if f.stream_id in res:
                    res[f.stream_id]["reset"] = f.error_code
                pending.discard(f.stream_id)
            elif isinstance(f, GoAwayFrame):
                print(json.dumps({"goaway": f.error_code,
                                  "debug": f.additional_data.decode(errors="replace")}))
                break
        return res


def main(path):
    c = Client(path)
    sock_path = path  # what kubelet v1.28 and grpc-java send
    plan = []

    def call(name, method, **kw):
        plan.append((name, RT + method, c.call(RT + method, kw.pop("authority", sock_path), **kw)))

    call("huffman_path_authority", "Version")
    call("table_reuse", "ListPodSandbox")
    call("table_reuse_again", "Version")
    # Request trailers add an entry to the client's table that the next call refers to.
    call("trailers", "Status", trailers=[("x-netready-test", "trailer-value")])
    call("after_trailers", "Version", extra=[("x-netready-test", "trailer-value")])
    # A connection-specific header: h2 resets this stream, after its block was decoded...
    call("reset_by_h2", "Status", extra=[("connection", "keep-alive"), ("x-reset", "indexed")])
    # ...so the entry it added is still there for this one.
    call("after_reset", "Status", extra=[("x-reset", "indexed")])
    c.enc.header_table_size = 256  # the next block opens with a size update
    call("size_update_down", "Version")
    c.enc.header_table_size = 4096
    call("size_update_up", "ListPodSandbox")
    call("padded", "Status", pad=37)
    call("continuation_every_3_bytes", "Version", split=3)
    call("continuation_trailers", "Status", split=2,
         trailers=[("x-netready-test", "another-trailer-value")])
    call("encoded_path_authority", "Version", authority=sock_path.lstrip("/").replace("/", "%2F"))
    call("localhost_authority", "ListPodSandbox", authority="localhost")
    call("empty_authority", "Status", authority="")
    call("no_authority", "Version", authority=None)
    res = c.answers([s for _, _, s in plan])
    for name, p, s in plan:
        r = res[s]
        print(json.dumps({"name": name, "path": p, "stream": s, "grpc_status": r["grpc_status"],
                          "reset": r["reset"], "body": r["body"].hex()}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: h2_adversarial.py SOCKET")
    main(sys.argv[1])
