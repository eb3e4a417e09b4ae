#!/usr/bin/env python3
"""Record the request frames real clients send, as a seed corpus for the request_frame target.

    capture.py LISTEN_PORT BROKER_HOST:PORT OUT_DIR [SECONDS]

A TCP proxy on 127.0.0.1:LISTEN_PORT that forwards to the broker and writes every
client-to-broker frame (the bytes after the i32 length prefix) to OUT_DIR/<api>-v<ver>-<sha>,
one file per distinct frame. Point clients at it with the broker advertising the proxy port
(`sluice serve --advertised-listener 127.0.0.1:LISTEN_PORT`), so that they reconnect through it.
Stops after SECONDS (default 60).
"""
import hashlib
import os
import socket
import struct
import sys
import threading
import time


def pump(src, dst, record):
    buf = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            if record:
                buf += data
                while len(buf) >= 4:
                    (n,) = struct.unpack(">i", buf[:4])
                    if n < 0 or len(buf) < 4 + n:
                        break
                    record(buf[4 : 4 + n])
                    buf = buf[4 + n :]
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, broker, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    host, port = broker.rsplit(":", 1)
    os.makedirs(out, exist_ok=True)

    def record(frame):
        if len(frame) < 4:
            return
        key, ver = struct.unpack(">hh", frame[:4])
        name = f"api{key:02d}-v{ver:02d}-{hashlib.sha1(frame).hexdigest()[:12]}"
        with open(os.path.join(out, name), "wb") as f:
            f.write(frame)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    server.settimeout(0.5)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            client, _ = server.accept()
        except socket.timeout:
            continue
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pump, args=(client, upstream, record), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()


if __name__ == "__main__":
    main()
