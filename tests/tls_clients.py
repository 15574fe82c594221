"""TLS clients of a given strength and a real handshake on a loopback socket (G6 tests).

A client either completes its handshake (`Handshake`, with what was negotiated) or gets an
`ssl.SSLError`. Nothing waits on a clock: the server side of `handshake` ends when its
handshake does, or when the client closes.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass

# A TLS 1.2 suite Python's own server defaults accept ("ECDH+AES") but Domicile's do not:
# CBC with HMAC, not an AEAD. A server serving Python's or uvicorn's context accepts it.
CBC_SUITE = "ECDHE-ECDSA-AES128-SHA256"


@dataclass(frozen=True)
class Handshake:
    version: str | None
    cipher: str | None
    compression: str | None


def old_client(version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_1) -> ssl.SSLContext:
    """A client that offers only `version` (TLS 1.0 or 1.1), with every suite it knows."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    client.minimum_version = version
    client.maximum_version = version
    return client


def tls12_client(cipher: str) -> ssl.SSLContext:
    """A TLS 1.2 client offering one suite (TLS 1.3 off: its suites cannot be narrowed)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_ciphers(f"{cipher}:@SECLEVEL=0")
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    return client


def lax_server(cert: str, key: str) -> ssl.SSLContext:
    """The control: a server that allows TLS 1.0/1.1 and every suite."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.TLSv1
    server.load_cert_chain(cert, key)
    return server


def connect(client: ssl.SSLContext, host: str, port: int,
            server_hostname: str | None = None) -> Handshake:
    """Handshake with a listening server; raises `ssl.SSLError` if it is refused."""
    with socket.create_connection((host, port), timeout=30) as raw, client.wrap_socket(
            raw, server_hostname=server_hostname) as tls:
        return Handshake(tls.version(), (tls.cipher() or (None,))[0], tls.compression())


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              server_hostname: str | None = None) -> Handshake:
    """One real handshake between `server` and `client` over a loopback socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_one() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # until the client closes
        except (ssl.SSLError, OSError):
            pass  # the client reports the refusal

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    try:
        return connect(client, "127.0.0.1", port, server_hostname)
    finally:
        thread.join(30)
        listener.close()
