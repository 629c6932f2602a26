"""The cluster secret: who may talk to a node, and how gossip is sealed; TLS contexts.

**Keyring.** A key file holds one key per line (blank lines and ``#`` comments ignored); the
first is the primary, used to prove who we are and to seal gossip, and every key in the file
is accepted from others. Rotation without downtime, as memberlist's keyring does: add the
new key as a second line on every node, restart them one by one; move it to the first line,
restart again; drop the old one. Keys are never used as they are: each use derives its own
key (HMAC-SHA256 of the secret with a label), so the auth key and the gossip key differ.

**TCP: challenge-response (mutual).** The server speaks first, as soon as a connection is
open, with the notification ``[2, "auth.challenge", [nonce_s, 1]]`` (32 random bytes and
the scheme version). The client answers with a request
``auth.hello(nonce_c, HMAC(k, "client" | nonce_s | nonce_c))``; the server tries its keys,
and answers ``{"mac": HMAC(k, "server" | nonce_s | nonce_c)}`` with the key that matched,
which proves to the client that the server holds it too. The secret never crosses the wire,
and an answer captured on one connection is worth nothing on another (a fresh nonce_s).
Until then the server serves nothing else: any other message gets an ``auth`` error and
the connection is closed.

**Gossip: AES-256-GCM.** Every UDP packet is ``0x01 | nonce (12 bytes) | ciphertext+tag``,
the version byte bound in as associated data. A packet that no key opens is dropped and
counted. Nonces are random (96 bits), as memberlist does; a key seals far fewer than the
2**32 packets past which a repeat becomes likely between rotations. A replayed packet is
accepted (SWIM's incarnation numbers make an old update harmless), as in memberlist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kvstore.errors import ConfigError

# hashlib (OpenSSL's libcrypto), hmac, secrets, ssl, ipaddress and logging load where they
# are used: a `kv get` without a secret or TLS reads this module only to learn that, and
# should not pay for them (issue 15: start-up).
if TYPE_CHECKING:
    import ssl

    from kvstore.config import Settings

__all__ = [
    "AUTH_CHALLENGE",
    "AUTH_HELLO",
    "GOSSIP_OVERHEAD_BYTES",
    "Keyring",
    "Security",
    "check_protected_mode",
    "client_options",
    "client_tls_context",
    "is_loopback_host",
    "load_keyring",
    "new_secret",
    "server_tls_context",
]

AUTH_CHALLENGE = "auth.challenge"
AUTH_HELLO = "auth.hello"
AUTH_VERSION = 1
NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
_GCM_VERSION = b"\x01"
_GCM_NONCE = 12
_GCM_TAG = 16
GOSSIP_OVERHEAD_BYTES = len(_GCM_VERSION) + _GCM_NONCE + _GCM_TAG


def _derive(secret: bytes, label: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(secret, b"kvstore/v1/" + label, hashlib.sha256).digest()


class Keyring:
    """The keys of a cluster: the first one signs and seals, every one is accepted."""

    __slots__ = ("_aead", "_auth", "source")

    def __init__(self, secrets_: Sequence[bytes], source: str = "") -> None:
        if not secrets_:
            raise ConfigError(f"{source or 'keyring'}: no key in it")
        for s in secrets_:
            if len(s) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{source or 'keyring'}: a key is {len(s)} bytes, shorter than "
                    f"{MIN_SECRET_BYTES} (make one with `kv secret new`)"
                )
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.source = source
        self._auth = [_derive(s, b"auth") for s in secrets_]
        self._aead = [AESGCM(_derive(s, b"gossip-aes256gcm")) for s in secrets_]

    def __len__(self) -> int:
        return len(self._auth)

    # -- TCP challenge-response

    @staticmethod
    def nonce() -> bytes:
        import secrets

        return secrets.token_bytes(NONCE_BYTES)

    def client_proof(self, nonce_s: bytes, nonce_c: bytes) -> bytes:
        return _mac(self._auth[0], b"client", nonce_s, nonce_c)

    def check_client(self, nonce_s: bytes, nonce_c: bytes, proof: bytes) -> int | None:
        """Index of the key that made ``proof``, or None. Every key is tried, each compared
        in constant time, so the answer's timing says nothing about which key was close."""
        import hmac

        found = None
        for i, k in enumerate(self._auth):
            if hmac.compare_digest(_mac(k, b"client", nonce_s, nonce_c), proof):
                found = i
        return found

    def server_proof(self, key_index: int, nonce_s: bytes, nonce_c: bytes) -> bytes:
        return _mac(self._auth[key_index], b"server", nonce_s, nonce_c)

    def check_server(self, nonce_s: bytes, nonce_c: bytes, proof: bytes) -> bool:
        """The server answered with our primary key (the one our proof used)."""
        import hmac

        return hmac.compare_digest(_mac(self._auth[0], b"server", nonce_s, nonce_c), proof)

    # -- gossip

    def seal(self, packet: bytes) -> bytes:
        nonce = os.urandom(_GCM_NONCE)
        return _GCM_VERSION + nonce + self._aead[0].encrypt(nonce, packet, _GCM_VERSION)

    def open(self, data: bytes) -> bytes | None:
        """The packet inside ``data``, or None when no key opens it (forged, damaged, or
        sealed with a key we do not have)."""
        if len(data) < GOSSIP_OVERHEAD_BYTES or data[:1] != _GCM_VERSION:
            return None
        from cryptography.exceptions import InvalidTag

        nonce = data[1 : 1 + _GCM_NONCE]
        body = data[1 + _GCM_NONCE :]
        for a in self._aead:
            try:
                return a.decrypt(nonce, body, _GCM_VERSION)
            except InvalidTag:
                continue
        return None


def _mac(key: bytes, role: bytes, nonce_s: bytes, nonce_c: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(key, b"auth/" + role + b"/" + nonce_s + nonce_c, hashlib.sha256).digest()


def load_keyring(path: str) -> Keyring:
    """The keyring in the key file at ``path``; ConfigError naming the path and the cause."""
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError(f"secret file {path}: {e.strerror or e}") from None
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(b"#"):
            keys.append(line)
    if not keys:
        raise ConfigError(f"secret file {path}: no key in it (make one with `kv secret new`)")
    return Keyring(keys, source=f"secret file {path}")


def new_secret() -> str:
    """A fresh key for a key file: 32 random bytes, hex."""
    import secrets

    return secrets.token_hex(32)


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` keeps the node reachable from this machine only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        import ipaddress

        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def server_tls_context(cert_file: str, key_file: str, ca_file: str = "", require_client_cert: bool = False) -> ssl.SSLContext:
    """TLS for a node's listening socket; with ``require_client_cert``, only clients and peers
    with a certificate signed by ``ca_file`` get through the handshake (mutual TLS)."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
        if ca_file:
            ctx.load_verify_locations(ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS certificate {cert_file} / key {key_file} / CA {ca_file or '-'}: {e}") from None
    if require_client_cert:
        if not ca_file:
            raise ConfigError("tls_client_auth needs tls_ca_file to check client certificates against")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """TLS for connections to nodes: the server's certificate is checked against ``ca_file``
    (the system's CAs when empty) and its name or IP against the address dialled; a
    certificate of our own is presented when given (for mutual TLS)."""
    import ssl

    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS CA {ca_file or '(system)'} / certificate {cert_file or '-'}: {e}") from None
    return ctx


class Security:
    """What a node's settings say about keys and TLS, loaded and checked once at start."""

    __slots__ = ("client_ssl", "keyring", "server_ssl")

    def __init__(
        self,
        keyring: Keyring | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.keyring = keyring
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl

    @classmethod
    def from_settings(cls, s: Settings) -> Security:
        """Load the key file and TLS files; ConfigError when they are unusable, or when
        protected mode forbids the listen address (see :func:`check_protected_mode`)."""
        check_protected_mode(s)
        keyring = load_keyring(s.secret_file) if s.secret_file else None
        server_ssl = client_ssl = None
        if s.tls_cert_file:
            server_ssl = server_tls_context(
                s.tls_cert_file, s.tls_key_file, s.tls_ca_file, s.tls_client_auth
            )
            # Peers are dialled with TLS too, checked against the same CA, and show our own
            # certificate, which a peer in mutual-TLS mode asks for.
            client_ssl = client_tls_context(s.tls_ca_file, s.tls_cert_file, s.tls_key_file)
        return cls(keyring, server_ssl, client_ssl)

    def server_options(self, s: Settings) -> dict[str, Any]:
        """Keyword arguments of RpcServer for these settings."""
        return {
            "max_frame_bytes": s.max_frame_bytes,
            "max_frame_depth": s.max_frame_depth,
            "max_frame_elements": s.max_frame_elements,
            "max_inflight": s.max_inflight_per_conn,
            "max_reply_buffer_bytes": s.max_reply_buffer_bytes,
            "max_connections": s.max_connections,
            "idle_timeout_s": s.idle_timeout_s,
            "frame_timeout_s": s.frame_timeout_s,
            "auth_timeout_s": s.auth_timeout_s,
            "keyring": self.keyring,
            "ssl_context": self.server_ssl,
        }

    def client_options(self, s: Settings) -> dict[str, Any]:
        """Keyword arguments of RpcClient (peer connections) for these settings."""
        return {
            "max_frame_depth": s.max_frame_depth,
            "max_frame_elements": s.max_frame_elements,
            "keyring": self.keyring,
            "ssl_context": self.client_ssl,
        }


def check_protected_mode(s: Settings) -> None:
    """Protected mode, as redis has: a node reachable from other machines must ask for the
    cluster key (or a client certificate), unless the operator says ``insecure``."""
    from kvstore.config import parse_addr

    host, _ = parse_addr(s.listen)
    if is_loopback_host(host) or s.secret_file or s.tls_client_auth:
        return
    if s.insecure:
        import logging

        logging.getLogger("kvstore.security").warning(
            "listening on %s with no cluster secret (--insecure): anyone who can reach it "
            "can read, write and change the cluster", s.listen,
        )
        return
    raise ConfigError(
        f"protected mode: refusing to listen on {s.listen} without a cluster secret, since "
        "anyone who could reach it could read and write every key, join the ring and stop "
        "nodes. Give --secret-file FILE or KV_SECRET_FILE (`kv secret new > FILE` makes one), "
        "listen on 127.0.0.1, or pass --insecure to run open anyway"
    )


def client_options(
    *,
    secret_file: str | None = None,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``keyring`` and ``ssl_context`` for an RpcClient of a client (kv, Client, jepsen-lite).

    Each argument left as None comes from the environment variable a node reads for the
    same setting (KV_SECRET_FILE, KV_TLS_CA_FILE, KV_TLS_CERT_FILE, KV_TLS_KEY_FILE); "" means
    none. TLS is used when a CA file is given: the node's certificate is checked against it.
    """
    env = os.environ if env is None else env

    def pick(value: str | None, var: str) -> str:
        return env.get(var, "") if value is None else value

    secret = pick(secret_file, "KV_SECRET_FILE")
    ca = pick(tls_ca_file, "KV_TLS_CA_FILE")
    cert = pick(tls_cert_file, "KV_TLS_CERT_FILE")
    key = pick(tls_key_file, "KV_TLS_KEY_FILE")
    return {
        "keyring": load_keyring(secret) if secret else None,
        "ssl_context": client_tls_context(ca, cert, key) if ca else None,
    }
