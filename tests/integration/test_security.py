"""The cluster secret, TLS and protected mode, over real sockets on 127.0.0.1.

Without the key no request is served (a replayed challenge answer included), no gossip
packet is accepted (forged or sealed with another key), and a node refuses to join; TLS
works end to end and refuses a certificate it cannot check.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kvstore.core.membership import MemberState, SwimConfig, wire
from kvstore.errors import AuthError, ConfigError, KVError
from kvstore.runtime.gossip import Gossip, push_pull_via, rpc_handlers
from kvstore.runtime.rpc import RpcClient, RpcServer
from kvstore.runtime.security import (
    AUTH_CHALLENGE,
    Keyring,
    client_tls_context,
    load_keyring,
    server_tls_context,
)
from kvstore.testing.processes import LocalCluster, free_port, wait_until
from tests.integration.test_rpc import WAIT_S, Raw, kv_handlers, serving

REPO = Path(__file__).resolve().parents[2]
K1 = b"first-cluster-secret-0123456789abcdef"
K2 = b"second-cluster-secret-0123456789abcdef"


def ring(*keys: bytes) -> Keyring:
    return Keyring(list(keys))


# --------------------------------------------------------------------------- TCP auth


def test_the_key_opens_the_door_and_nothing_else_does(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers(), keyring=ring(K1)) as server:
            addr = f"127.0.0.1:{server.port}"
            good = RpcClient(keyring=ring(K1))
            assert await good.call(addr, "echo", ["in"], WAIT_S) == ["in"]
            await good.close()

            wrong = RpcClient(keyring=ring(K2))
            with pytest.raises(AuthError, match=f"^{addr} refused the cluster key$"):
                await wrong.call(addr, "echo", [], WAIT_S)
            # Fails fast afterwards too, with the same error, not a reconnect storm.
            with pytest.raises(AuthError, match="refused the cluster key"):
                await wrong.call(addr, "echo", [], WAIT_S)
            await wrong.close()

            none = RpcClient()
            with pytest.raises(AuthError, match=f"^{addr} requires the cluster key"):
                await none.call(addr, "put", [b"k", b"v"], WAIT_S)
            await none.close()
            assert server.stats["auth_ok"] == 1 and server.stats["auth_failed"] == 2

    arun(body)


def test_no_message_is_served_before_the_proof(arun: Any) -> None:
    """A foreign client ignoring the challenge: requests, notifications, responses and
    admin calls all get one auth error, and the connection is closed."""

    async def body() -> None:
        served: list[str] = []

        def admin(name: str) -> Callable[..., Any]:
            def h(*_: Any) -> str:
                served.append(name)
                return name

            return h

        handlers = {m: admin(m) for m in ("cluster.join", "cluster.leave", "node.restart", "node.stop", "ring.update", "put")}
        async with serving(handlers, keyring=ring(K1)) as server:
            for msg in (
                [0, 1, "cluster.join", ["evil", "127.0.0.1:1"]],
                [0, 1, "node.restart", []],
                [0, 1, "node.stop", []],
                [0, 1, "ring.update", [{}]],
                [2, "put", [b"k", b"v"]],
                [0, 1, "auth.hello", [b"x", b"y"]],
            ):
                raw = await Raw.open(server.port)
                challenge = await raw.recv()
                assert challenge[0] == 2 and challenge[1] == AUTH_CHALLENGE
                await raw.send(msg)
                if msg[0] == 0:
                    reply = await raw.recv()
                    assert reply[2]["code"] == "auth", reply
                assert await raw.closed_by_server()
                await raw.close()
            assert served == []

    arun(body)


def test_a_captured_answer_cannot_be_replayed(arun: Any) -> None:
    async def body() -> None:
        keys = ring(K1)
        async with serving(kv_handlers(), keyring=keys) as server:
            raw = await Raw.open(server.port)
            nonce_s = (await raw.recv())[2][0]
            nonce_c = b"c" * 32
            hello = [0, 1, "auth.hello", [nonce_c, keys.client_proof(nonce_s, nonce_c)]]
            await raw.send(hello)  # what an eavesdropper would capture
            reply = await raw.recv()
            assert reply[2] is None and keys.check_server(nonce_s, nonce_c, reply[3]["mac"])
            await raw.send([0, 2, "echo", ["ok"]])
            assert await raw.recv() == [1, 2, None, ["ok"]]
            await raw.close()

            replay = await Raw.open(server.port)
            fresh = (await replay.recv())[2][0]
            assert fresh != nonce_s
            await replay.send(hello)
            reply = await replay.recv()
            assert reply[2]["code"] == "auth" and "refused" in reply[2]["message"]
            assert await replay.closed_by_server()
            await replay.close()

    arun(body)


def test_the_server_must_prove_the_key_too(arun: Any) -> None:
    """A rogue server that answers the hello without the key is not trusted."""

    async def body() -> None:
        async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(msgpack.packb([2, AUTH_CHALLENGE, [b"n" * 32, 1]]))
            unp = msgpack.Unpacker()
            while (data := await reader.read(4096)):
                unp.feed(data)
                for m in unp:
                    writer.write(msgpack.packb([1, m[1], None, {"mac": b"\x00" * 32}]))

        srv = await asyncio.start_server(rogue, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = RpcClient(keyring=ring(K1))
        with pytest.raises(AuthError, match="could not prove it holds the cluster key"):
            await c.call(f"127.0.0.1:{port}", "echo", [], WAIT_S)
        await c.close()
        srv.close()
        await srv.wait_closed()

    arun(body)


def test_a_keyed_client_refuses_an_open_server(arun: Any) -> None:
    async def body() -> None:
        async with serving(kv_handlers()) as server:
            c = RpcClient(keyring=ring(K1), connect_timeout_s=0.5)
            with pytest.raises(AuthError, match="did not ask for the cluster key"):
                await c.call(f"127.0.0.1:{server.port}", "echo", [], WAIT_S)
            await c.close()

    arun(body)


def test_keys_rotate_without_downtime(arun: Any) -> None:
    """memberlist's procedure: add the new key everywhere, make it primary, drop the old."""

    async def body() -> None:
        async with serving(kv_handlers(), keyring=ring(K2, K1)) as server:  # new first, old accepted
            addr = f"127.0.0.1:{server.port}"
            for keys in (ring(K1), ring(K1, K2), ring(K2), ring(K2, K1)):
                c = RpcClient(keyring=keys)
                assert await c.call(addr, "echo", [1], WAIT_S) == [1]
                await c.close()
        async with serving(kv_handlers(), keyring=ring(K2)) as server:  # old key dropped
            c = RpcClient(keyring=ring(K1))
            with pytest.raises(AuthError):
                await c.call(f"127.0.0.1:{server.port}", "echo", [], WAIT_S)
            await c.close()

    arun(body)


def test_key_files(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("# cluster key\n\n" + K1.decode() + "\n" + K2.decode() + "\n")
    assert len(load_keyring(str(f))) == 2
    f.write_text("short\n")
    with pytest.raises(ConfigError, match=f"secret file {f}: a key is 5 bytes"):
        load_keyring(str(f))
    with pytest.raises(ConfigError, match="No such file"):
        load_keyring(str(tmp_path / "missing"))
    # The secret itself is never used on the wire, only keys derived from it.
    keys = ring(K1)
    proof = keys.client_proof(b"s" * 32, b"c" * 32)
    assert proof != hmac.new(K1, b"s" * 32 + b"c" * 32, hashlib.sha256).digest()


# --------------------------------------------------------------------------- gossip

CFG = SwimConfig(probe_interval_s=0.1, probe_timeout_s=0.05, gossip_interval_s=0.05, push_pull_interval_s=1.0)


class _Member:
    def __init__(self, name: str, keys: Keyring | None) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.client = RpcClient(connect_timeout_s=0.5, keyring=keys)
        self.gossip = Gossip(CFG, name, self.addr, self.addr, random.Random(), push_pull_via(self.client, 1.0), keyring=keys)
        self.server = RpcServer(rpc_handlers(self.gossip), keyring=keys)

    async def start(self) -> _Member:
        await self.server.start("127.0.0.1", self.port)
        await self.gossip.start()
        return self

    async def close(self) -> None:
        await self.gossip.stop()
        await self.server.close()
        await self.client.close()


async def eventually(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_gossip_is_sealed_and_forged_packets_are_dropped(arun: Any) -> None:
    async def body() -> None:
        a = await _Member("a", ring(K1)).start()
        b = await _Member("b", ring(K1)).start()
        outsider = await _Member("x", ring(K2)).start()
        try:
            assert await b.gossip.join([a.addr]) == 1
            await eventually(lambda: a.gossip.member("b") is not None and b.gossip.member("a") is not None)
            await eventually(lambda: a.gossip.member("b").state is MemberState.ALIVE)  # type: ignore[union-attr]
            # Another key: its push-pull is refused by TCP auth, its packets by AES-GCM.
            assert await outsider.gossip.join([a.addr]) == 0

            # A forged packet (plain SWIM, as an attacker would write it), and one sealed with
            # another key, each announcing a member that does not exist, and declaring b dead.
            forged = wire.encode_packet(
                wire.Packet(wire.Gossip(), (wire.Alive("mallory", "127.0.0.1:9", 1, {}, False), wire.Dead("b", 99, "b")))
            )
            before = a.gossip.stats["datagrams_refused"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(forged, ("127.0.0.1", a.port))
                s.sendto(ring(K2).seal(forged), ("127.0.0.1", a.port))
                sealed = ring(K1).seal(forged)
                s.sendto(sealed[:-1] + bytes([sealed[-1] ^ 1]), ("127.0.0.1", a.port))  # tampered
            await eventually(lambda: a.gossip.stats["datagrams_refused"] >= before + 3)
            await asyncio.sleep(CFG.probe_interval_s * 3)
            assert a.gossip.member("mallory") is None and a.gossip.member("x") is None
            assert a.gossip.member("b").state is MemberState.ALIVE  # type: ignore[union-attr]
            assert outsider.gossip.member("a") is None
        finally:
            for m in (a, b, outsider):
                await m.close()

    arun(body)


# --------------------------------------------------------------------------- TLS


def _cert(tmp: Path, name: str, ca: tuple[Any, Any] | None, *, is_ca: bool = False) -> tuple[Any, Any, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = ca if ca is not None else (None, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    cert = b.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key, cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_cert, ca_key, ca_path, _ = _cert(tmp_path, "ca", None, is_ca=True)
    _, _, srv_crt, srv_key = _cert(tmp_path, "node", (ca_cert, ca_key))
    _, _, cli_crt, cli_key = _cert(tmp_path, "client", (ca_cert, ca_key))
    other_cert, other_key, other_ca, _ = _cert(tmp_path, "other-ca", None, is_ca=True)
    _, _, rogue_crt, rogue_key = _cert(tmp_path, "rogue", (other_cert, other_key))
    return {
        "ca": ca_path, "crt": srv_crt, "key": srv_key, "cli_crt": cli_crt, "cli_key": cli_key,
        "other_ca": other_ca, "rogue_crt": rogue_crt, "rogue_key": rogue_key,
    }


def test_tls_end_to_end_with_the_key(arun: Any, pki: dict[str, Path]) -> None:
    async def body() -> None:
        ctx = server_tls_context(str(pki["crt"]), str(pki["key"]))
        async with serving(kv_handlers(), ssl_context=ctx, keyring=ring(K1), auth_timeout_s=1.0) as server:
            addr = f"127.0.0.1:{server.port}"
            c = RpcClient(ssl_context=client_tls_context(str(pki["ca"])), keyring=ring(K1))
            assert await c.call(addr, "put", [b"k", b"secret value"], WAIT_S) is True
            assert await c.call(addr, "get", [b"k"], WAIT_S) == b"secret value"
            await c.close()
            # Plain msgpack to a TLS port gets no answer, and is closed at the handshake timeout.
            raw = await Raw.open(server.port)
            await raw.send([0, 1, "get", [b"k"]])
            assert await raw.closed_by_server()
            await raw.close()

    arun(body)


def test_tls_refuses_a_certificate_it_cannot_check(arun: Any, pki: dict[str, Path]) -> None:
    async def body() -> None:
        # The node shows a certificate from a CA the client does not trust.
        rogue = server_tls_context(str(pki["rogue_crt"]), str(pki["rogue_key"]))
        async with serving(kv_handlers(), ssl_context=rogue) as server:
            c = RpcClient(ssl_context=client_tls_context(str(pki["ca"])))
            with pytest.raises(AuthError, match=r"TLS handshake failed.*CERTIFICATE_VERIFY_FAILED"):
                await c.call(f"127.0.0.1:{server.port}", "echo", [], WAIT_S)
            await c.close()

    arun(body)


def test_mutual_tls_needs_a_client_certificate(arun: Any, pki: dict[str, Path]) -> None:
    async def body() -> None:
        ctx = server_tls_context(str(pki["crt"]), str(pki["key"]), str(pki["ca"]), require_client_cert=True)
        async with serving(kv_handlers(), ssl_context=ctx) as server:
            addr = f"127.0.0.1:{server.port}"
            with_cert = RpcClient(ssl_context=client_tls_context(str(pki["ca"]), str(pki["cli_crt"]), str(pki["cli_key"])))
            assert await with_cert.call(addr, "echo", ["m"], WAIT_S) == ["m"]
            await with_cert.close()
            for ctx_ in (
                client_tls_context(str(pki["ca"])),  # no certificate
                client_tls_context(str(pki["ca"]), str(pki["rogue_crt"]), str(pki["rogue_key"])),  # wrong CA
            ):
                c = RpcClient(ssl_context=ctx_)
                with pytest.raises(KVError):
                    await c.call(addr, "echo", [], WAIT_S)
                await c.close()

    arun(body)

# --------------------------------------------------------------------------- real nodes


def _kv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("KV_")} | (env or {}),
    )


def test_a_cluster_with_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text(K1.decode() + "\n")
    wrong = tmp_path / "wrong.key"
    wrong.write_text(K2.decode() + "\n")
    with LocalCluster(tmp_path, nodes=2, n=2, r=1, w=1, extra=["--secret-file", str(key)], secret_file=str(key)) as c:
        c.start_all()
        c.client().put("a", "1")
        addr = c.nodes["n1"].addr
        ok = _kv("--node", addr, "--secret-file", str(key), "get", "a")
        assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
        bad = _kv("--node", addr, "--secret-file", str(wrong), "get", "a")
        assert bad.returncode == 2 and bad.stderr.strip() == f"kv: {addr} refused the cluster key", bad.stderr
        none = _kv("--node", addr, "put", "a", "2")
        assert none.returncode == 2 and f"kv: {addr} requires the cluster key" in none.stderr, none.stderr
        for admin in (["node", "stop"], ["node", "restart"], ["cluster", "leave", "n2"]):
            r = _kv("--node", addr, *admin)
            assert r.returncode != 0 and "cluster key" in r.stderr, (admin, r.stderr)

        # A node with the wrong key cannot join: its join is refused, and so is its gossip.
        intruder = c.add("n3")
        intruder.args[intruder.args.index(str(key))] = str(wrong)
        c.start("n3", wait=False)
        wait_until(lambda: "refused the cluster key" in intruder.log(), 60, what="the intruder to be refused")
        st = c.status("n1")
        assert st is not None and sorted(m["name"] for m in st["members"]) == ["n1", "n2"]
        assert c.client().get("a").value == b"1"


def test_protected_mode(tmp_path: Path) -> None:
    port = free_port()
    r = _kv("node", "start", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1
    assert "protected mode: refusing to listen on 0.0.0.0" in r.stderr and "--insecure" in r.stderr, r.stderr
