#!/usr/bin/env python3
"""A CRI client on Python grpcio (gRPC C-core), for netready's interop tests.

`grpcio_client.py SOCKET` reads one JSON call per line on stdin ({"method", "req": hex}) and
writes {"method", "code", "message", "resp": hex} per line, as tests/interop/cri-go does.
`grpcio_client.py --probe-authority` prints the :authority grpcio sends when it dials a unix
socket: it serves one connection with python-hyper's h2 on a socket of its own and records the
first request's headers, so the tests check the form on the wire instead of assuming it.
"""
import json
import os
import socket
import sys
import tempfile
import threading

import grpc


def identity(b):
    return b


def serve_calls(path):
    channel = grpc.insecure_channel(f"unix:{path}")
    out = sys.stdout
    for line in sys.stdin:
        call = json.loads(line)
        rpc = channel.unary_unary(call["method"], request_serializer=identity,
                                  response_deserializer=identity)
        try:
            resp = rpc(bytes.fromhex(call["req"]), timeout=120)
            reply = {"method": call["method"], "code": 0, "message": "", "resp": resp.hex()}
        except grpc.RpcError as e:
            reply = {"method": call["method"], "code": e.code().value[0],
                     "message": e.details() or "", "resp": ""}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    channel.close()


def probe_authority():
    import h2.config
    import h2.connection
    import h2.events

    seen = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            h2c.initiate_connection()
            conn.sendall(h2c.data_to_send())
            while "headers" not in seen:
                data = conn.recv(65536)
                if not data:
                    break
                for ev in h2c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        seen["headers"] = {k.decode(): v.decode() for k, v in ev.headers}
                        h2c.send_headers(ev.stream_id, [(":status", "200"),
                                                        ("content-type", "application/grpc"),
                                                        ("grpc-status", "12")], end_stream=True)
                conn.sendall(h2c.data_to_send())
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        channel = grpc.insecure_channel(f"unix:{path}")
        rpc = channel.unary_unary("/runtime.v1.RuntimeService/Version",
                                  request_serializer=identity, response_deserializer=identity)
        try:
            rpc(b"", timeout=10)
        except grpc.RpcError:
            pass
        channel.close()
        t.join(10)
        srv.close()
    print(json.dumps({"grpcio": grpc.__version__,
                      "authority": seen.get("headers", {}).get(":authority")}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe-authority"]:
        probe_authority()
    elif len(sys.argv) == 2:
        serve_calls(sys.argv[1])
    else:
        sys.exit("usage: grpcio_client.py SOCKET | --probe-authority")
