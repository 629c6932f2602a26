"""Every setting of a kvstore node, with its default, its unit and one line of doc.

One home for each setting: CLI flags (``kv node start --n-replicas 3``), environment
variables (``KV_N_REPLICAS=3``) and a TOML file (``n_replicas = 3``, top level or under
``[kvstore]``) all map onto the fields of :class:`Settings`. Precedence, lowest first:
defaults < TOML file < environment < flags.

Timing formulas (SWIM, as hashicorp/memberlist computes them):
    suspicion timeout  = suspicion_mult × max(1, log10(N + 1)) × probe_interval_s
                         (shrinks towards its minimum as independent confirmations arrive,
                         Lifeguard; the maximum is suspicion_max_timeout_mult × that)
    retransmissions    = retransmit_mult × ceil(log10(N + 1))
    probe interval     = probe_interval_s × (1 + health score)  (Lifeguard local health)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kvstore.errors import ConfigError

FSYNC_POLICIES = ("always", "everysec", "no")
CONFLICT_MODES = ("siblings", "lww")


def _s(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    # --- identity and addresses
    node_id: str = _s("", "Stable name of this node; defaults to its listen address.")
    listen: str = _s("127.0.0.1:7000", "HOST:PORT for client and peer RPC (TCP) and gossip (UDP).")
    advertise: str = _s("", "HOST:PORT other nodes use to reach this one; defaults to listen.")
    data_dir: str = _s("./kvdata/node", "Directory of this node's LevelDB.")
    seeds: tuple[str, ...] = _s((), "HOST:PORT of nodes to join through.")
    auto_join: bool = _s(True, "Ask the seeds to add this node to the ring on start.")

    # --- replication
    n_replicas: int = _s(3, "N: replicas of each key.")
    r: int = _s(2, "R: replicas that must answer a read (per-request override allowed).")
    w: int = _s(2, "W: replicas that must acknowledge a write (per-request override allowed).")
    partitions: int = _s(256, "Q: partitions of the ring (a power of two, fixed for a cluster's life).")
    conflict: str = _s("siblings", "Concurrent writes: 'siblings' keeps all, 'lww' keeps the newest.")
    request_timeout_s: float = _s(2.0, "Coordinator's deadline for R/W replies.")
    forward_timeout_s: float = _s(4.0, "Deadline for a request forwarded to another coordinator.")

    # --- limits
    max_key_bytes: int = _s(64 * 1024, "Largest key accepted; larger ones get too_large.")
    max_value_bytes: int = _s(1024 * 1024, "Largest value accepted; larger ones get too_large.")
    max_frame_bytes: int = _s(8 * 1024 * 1024, "Largest msgpack-RPC frame; larger closes the connection.")

    # --- storage
    fsync: str = _s("everysec", "LevelDB sync policy: always (each batch), everysec, no.")
    snapshot_dir: str = _s("/dev/shm", "Where graceful stops write the shared-memory snapshot.")
    handoff_batch_keys: int = _s(500, "Records per ownership-handoff fetch (bounded batches give back-pressure).")
    handoff_drop_delay_s: float = _s(10.0, "After a ring change commits, wait this long before dropping data no longer replicated here.")

    # --- healing: hinted handoff, anti-entropy, tombstones
    max_hints: int = _s(1_000_000, "Most hints a node keeps for down peers; past it new hints are refused (logged, counted).")
    hint_max_age_s: float = _s(7 * 24 * 3600.0, "Hints older than this are dropped (anti-entropy repairs the rest).")
    hint_batch_keys: int = _s(200, "Hints delivered per call to a peer that is back.")
    hint_interval_s: float = _s(1.0, "How often pending hints are checked for delivery.")
    aae_interval_s: float = _s(10.0, "How often anti-entropy considers starting exchanges.")
    aae_exchanges_per_min: int = _s(60, "Most anti-entropy exchanges (one partition with one peer) a node starts per minute.")
    aae_max_repairs_per_s: int = _s(2000, "Most keys anti-entropy repairs per second on this node.")
    tombstone_grace_s: float = _s(3600.0, "A tombstone held by all N replicas is collected after this long.")

    # --- RPC client
    connect_timeout_s: float = _s(1.0, "Deadline to open a TCP connection to a peer.")
    reconnect_min_s: float = _s(0.05, "First reconnect backoff; doubles up to reconnect_max_s.")
    reconnect_max_s: float = _s(2.0, "Cap of the reconnect backoff (with jitter).")

    # --- SWIM membership (LAN defaults; `kv cluster up` uses local ones)
    probe_interval_s: float = _s(1.0, "Protocol period: one member probed per period.")
    probe_timeout_s: float = _s(0.5, "Wait for an ack before asking others (ping-req).")
    indirect_checks: int = _s(3, "k: members asked to probe indirectly.")
    suspicion_mult: float = _s(4.0, "Suspicion timeout multiplier (formula above).")
    suspicion_max_timeout_mult: float = _s(6.0, "Upper bound of the suspicion timeout, × its minimum.")
    retransmit_mult: int = _s(4, "λ: each gossip update is piggybacked about λ·log(N+1) times.")
    push_pull_interval_s: float = _s(30.0, "Full-state exchange with one random member every this often.")
    awareness_max_multiplier: int = _s(8, "Lifeguard: cap of the local health score (probe stretch).")
    gossip_max_packet_bytes: int = _s(1400, "Largest UDP packet sent (keeps under a safe MTU).")
    gossip_interval_s: float = _s(0.2, "While updates are queued, a gossip-only packet goes out this often.")
    gossip_nodes: int = _s(3, "Members each gossip-only packet goes to (0: piggyback on probes only).")
    lifeguard: bool = _s(True, "Lifeguard extensions (local health, nacks, buddy system, dynamic suspicion).")
    dampen_penalty: float = _s(1.0, "Flap dampening: penalty added on each state change.")
    dampen_suppress: float = _s(3.0, "Above this penalty a member's changes stop moving routing.")
    dampen_reuse: float = _s(1.0, "Below this penalty a suppressed member is used again.")
    dampen_half_life_s: float = _s(30.0, "Half-life of the dampening penalty.")
    dampen_max_penalty: float = _s(6.0, "Cap of the dampening penalty.")

    # --- security (README "Securing a cluster"; kvstore/runtime/security.py for the protocol)
    secret_file: str = _s("", "Key file of the cluster secret (one key a line, the first signs; several for rotation). Empty: no authentication.")
    insecure: bool = _s(False, "Allow listening beyond loopback without a secret (protected mode off).")
    tls_cert_file: str = _s("", "PEM certificate (chain) of this node; set with tls_key_file to serve TLS only.")
    tls_key_file: str = _s("", "PEM private key of tls_cert_file.")
    tls_ca_file: str = _s("", "PEM CA bundle peers' certificates are checked against (and clients', with tls_client_auth).")
    tls_client_auth: bool = _s(False, "Mutual TLS: refuse connections without a certificate signed by tls_ca_file.")

    # --- abuse limits of the RPC server (each connection, unless the name says node)
    max_frame_depth: int = _s(32, "Deepest nesting of arrays/maps in one frame; deeper closes the connection.")
    max_frame_elements: int = _s(262_144, "Most array/map elements in one frame (a map entry counts 2); bounds decoded memory.")
    max_inflight_per_conn: int = _s(4096, "Async requests running per connection; past it the connection is not read until half finish.")
    max_reply_buffer_bytes: int = _s(16 * 1024 * 1024, "Replies waiting to be sent per connection; past it the connection is not read until they drain.")
    max_connections: int = _s(4096, "Open TCP connections per node; past it new ones are closed at once (logged).")
    idle_timeout_s: float = _s(600.0, "A connection with nothing sent or running for this long is closed (after a bye notice).")
    frame_timeout_s: float = _s(30.0, "A frame begun must be complete within this time (slow senders are closed).")
    auth_timeout_s: float = _s(10.0, "A connection must prove the cluster key (and finish TLS) within this time.")

    def __post_init__(self) -> None:
        problems = []
        if self.n_replicas < 1:
            problems.append("n_replicas must be >= 1")
        if not 1 <= self.r <= self.n_replicas:
            problems.append(f"r must be in 1..n_replicas ({self.n_replicas}), got {self.r}")
        if not 1 <= self.w <= self.n_replicas:
            problems.append(f"w must be in 1..n_replicas ({self.n_replicas}), got {self.w}")
        q = self.partitions
        if q < 1 or q & (q - 1):
            problems.append(f"partitions must be a power of two, got {q}")
        if self.fsync not in FSYNC_POLICIES:
            problems.append(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if self.conflict not in CONFLICT_MODES:
            problems.append(f"conflict must be one of {', '.join(CONFLICT_MODES)}, got {self.conflict!r}")
        for name in (
            "max_key_bytes", "max_value_bytes", "max_frame_bytes", "hint_batch_keys",
            "handoff_batch_keys", "aae_exchanges_per_min", "aae_max_repairs_per_s",
            "max_frame_depth", "max_frame_elements", "max_inflight_per_conn",
            "max_reply_buffer_bytes", "max_connections",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        if self.max_hints < 0:
            problems.append("max_hints must be >= 0")
        for f in fields(self):
            if f.name.endswith("_s") and getattr(self, f.name) <= 0:
                problems.append(f"{f.name} must be > 0 seconds")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append("tls_cert_file and tls_key_file go together")
        if self.tls_client_auth and not (self.tls_cert_file and self.tls_ca_file):
            problems.append("tls_client_auth needs tls_cert_file, tls_key_file and tls_ca_file")
        try:
            parse_addr(self.listen)
            if self.advertise:
                parse_addr(self.advertise)
            for s in self.seeds:
                parse_addr(s)
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    @property
    def name(self) -> str:
        return self.node_id or self.advertised

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def docs() -> list[tuple[str, str, Any]]:
        """(name, doc, default) for each setting, for `kv node start --help` and docs."""
        return [(f.name, f.metadata["doc"], f.default) for f in fields(Settings)]


def parse_addr(addr: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with a ConfigError that names the bad value."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {addr!r} is not HOST:PORT")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"address {addr!r}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"address {addr!r}: port {p} out of range")
    return host.strip("[]"), p


def _coerce(name: str, typ: Any, raw: Any, where: str) -> Any:
    try:
        if typ in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ in ("int", int):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if typ in ("float", float):
            return float(raw)
        if typ in ("tuple[str, ...]",):
            if isinstance(raw, str):
                return tuple(s.strip() for s in raw.split(",") if s.strip())
            return tuple(str(s) for s in raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: setting {name} = {raw!r} is not a valid {typ}") from None


def load_settings(
    *,
    toml_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < KV_* environment < overrides (CLI flags). Raises ConfigError."""
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as e:
            raise ConfigError(f"config file {toml_path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {toml_path}: {e}") from None
        section = doc.get("kvstore", doc)
        for k, v in section.items():
            if k == "kvstore" and isinstance(v, dict):
                continue
            if k not in known:
                raise ConfigError(f"config file {toml_path}: unknown setting {k!r}")
            values[k] = _coerce(k, known[k], v, f"config file {toml_path}")
    env = os.environ if env is None else env
    for k, t in known.items():
        var = "KV_" + k.upper()
        if var in env:
            values[k] = _coerce(k, t, env[var], f"environment {var}")
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in known:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = _coerce(k, known[k], v, f"option --{k.replace('_', '-')}")
    return Settings(**values)
