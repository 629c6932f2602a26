"""Every setting of a kvstore node, with its default, its unit and one line of doc.

One home for each setting: CLI flags (``kv node start --n-replicas 3``), environment
variables (``KV_N_REPLICAS=3``) and a TOML file (``n_replicas = 3``, top level or under
``[kvstore]``) all map onto the fields of :class:`Settings`. Precedence, lowest first:
defaults < TOML file < environment < flags.

The SWIM settings take their defaults and docs from kvstore.core.membership.config, whose
docstring gives the timing formulas (as hashicorp/memberlist computes them).

Safety rules checked at load (a node refuses to start otherwise):
    tombstone_grace_s  > hint_max_age_s + max_clock_skew_s       (no hint outlives a tombstone)
    max_record_bytes, hint_batch_bytes, handoff_batch_bytes
                       <= max_frame_bytes - max_key_bytes - 64 KiB (a record always fits a frame)
    max_value_bytes    <= max_record_bytes, warn_siblings <= max_siblings
    node name          1..246 of A-Z a-z 0-9 . - _ : [ ]           (hint keys, vclock actors)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from kvstore.core.membership.config import swim_setting
from kvstore.core.messages import Limits
from kvstore.core.zones import DEFAULT_ZONE, zone_problem
from kvstore.errors import ConfigError
from storage.compression import COMPRESSIONS, DEFAULT_COMPRESSION
from storage.fsync import FSYNC_POLICIES

CONFLICT_MODES = ("siblings", "lww")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Failure detection for a cluster on one machine (`kv cluster up`, the test clusters of
# kvstore.testing, jepsen-lite): a dead node is noticed in about a second, not ten, and the
# loopback network makes the short timeouts safe.
LOCAL_TIMINGS: Mapping[str, float] = MappingProxyType(
    {"probe_interval_s": 0.2, "probe_timeout_s": 0.1, "push_pull_interval_s": 5.0}
)

# msgpack-RPC framing, method name, partition and the other small parameters around the one
# large item (a record or a hint batch) of a call, with room to spare.
FRAME_ENVELOPE_BYTES = 64 * 1024

# Node names become vector-clock actors ("<name>~<8 hex digits>", runtime/replica.py), which
# vclock refuses past 255 characters, and they appear in hint keys, logs and metrics labels.
NODE_NAME_MAX_CHARS = 246
_NODE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]")


def check_node_name(name: str) -> None:
    """ConfigError unless ``name`` is a usable node name (the default, HOST:PORT, always is;
    brackets are allowed for IPv6 addresses)."""
    bad = sorted(set(name) - _NODE_NAME_CHARS)
    if not name or len(name) > NODE_NAME_MAX_CHARS or bad:
        why = (
            "is empty" if not name
            else f"is {len(name)} characters long" if len(name) > NODE_NAME_MAX_CHARS
            else "contains " + ", ".join(repr(c) for c in bad)
        )
        raise ConfigError(
            f"node name {name!r} {why}: a node name is 1 to {NODE_NAME_MAX_CHARS} characters, "
            "each an ASCII letter or digit or one of . - _ : [ ]"
        )


def _s(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    # --- identity and addresses
    node_id: str = _s(
        "",
        "Stable name of this node: 1 to 246 ASCII letters, digits and . - _ : [ ]; defaults to its advertised address.",
    )
    listen: str = _s("127.0.0.1:7000", "HOST:PORT for client and peer RPC (TCP) and gossip (UDP).")
    advertise: str = _s("", "HOST:PORT other nodes use to reach this one; defaults to listen.")
    data_dir: str = _s("./kvdata/node", "Directory of this node's LevelDB.")
    seeds: tuple[str, ...] = _s((), "HOST:PORT of nodes to join through.")
    auto_join: bool = _s(True, "Ask the seeds to add this node to the ring on start.")
    zone: str = _s(
        DEFAULT_ZONE,
        "Failure domain of this node (rack, room, availability zone): 1 to 64 ASCII letters, "
        "digits and . - _. Preference lists span as many zones as N allows; nodes left at the "
        "default all share one zone.",
    )

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
    max_record_bytes: int = _s(
        4 * 1024 * 1024,
        "Largest encoded record (all siblings of a key) a write may leave; a write past it gets "
        "too_large and is stored nowhere. Must leave room for a key and the envelope within "
        "max_frame_bytes, or the record could no longer be replicated.",
    )
    max_siblings: int = _s(100, "Most siblings a write may leave on a key (as Riak); past it the write gets too_large.")
    warn_siblings: int = _s(25, "A write leaving at least this many siblings on a key is logged as a warning.")

    # --- storage
    fsync: str = _s("everysec", "LevelDB sync policy: always (each batch), everysec, no.")
    storage_compression: str = _s(
        DEFAULT_COMPRESSION,
        "How the LevelDB copy is compressed: lz4 (each record as it is written: LevelDB's compactions "
        "then rewrite fewer bytes), none (for values that do not compress), or snappy (LevelDB's "
        "blocks, paid again at every compaction). Any setting opens a store written under another.",
    )
    snapshot_dir: str = _s("/dev/shm", "Where graceful stops write the shared-memory snapshot.")
    handoff_batch_keys: int = _s(500, "Records per ownership-handoff fetch (bounded batches give back-pressure).")
    handoff_batch_bytes: int = _s(
        2 * 1024 * 1024,
        "Most record bytes per ownership-handoff fetch (a larger record goes alone); well under max_frame_bytes.",
    )
    handoff_drop_delay_s: float = _s(10.0, "After a ring change commits, wait this long before dropping data no longer replicated here.")

    # --- key listing (kv keys; kvstore.runtime.keylist)
    keys_list_rate_per_s: int = _s(
        20_000,
        "Most keys per second one node scans for key listings (all listings together); a page waits its turn past it.",
    )
    keys_list_page_keys: int = _s(500, "Most keys one keys.list call scans (and returns); the loop is free between pages.")

    # --- healing: hinted handoff, anti-entropy, tombstones
    max_hints: int = _s(1_000_000, "Most hints a node keeps for down peers; past it new hints are refused (logged, counted).")
    hint_max_age_s: float = _s(
        3 * 3600.0,
        "Hints older than this (since first stored) are dropped, checked right before each "
        "send; anti-entropy repairs the rest. Must stay below tombstone_grace_s (see there).",
    )
    hint_batch_keys: int = _s(200, "Most hints delivered per call to a peer that is back.")
    hint_batch_bytes: int = _s(
        2 * 1024 * 1024,
        "Most record bytes per hint delivery call (a larger hint goes alone); well under max_frame_bytes.",
    )
    hint_interval_s: float = _s(1.0, "How often pending hints are checked for delivery.")
    aae_interval_s: float = _s(10.0, "How often anti-entropy considers starting exchanges.")
    aae_exchanges_per_min: int = _s(60, "Most anti-entropy exchanges (one partition with one peer) a node starts per minute.")
    aae_max_repairs_per_s: int = _s(2000, "Most keys anti-entropy repairs per second on this node.")
    tombstone_grace_s: float = _s(
        24 * 3600.0,
        "A tombstone held by all N replicas is collected after this long. Must exceed "
        "hint_max_age_s + max_clock_skew_s (as Cassandra's gc_grace exceeds its hint window): "
        "a hint is made by a write, so a delete that supersedes what it carries comes later, and "
        "the hint is sent at most hint_max_age_s after it was made, while that delete's "
        "tombstone is kept at least tombstone_grace_s: no hint arrives after the tombstone "
        "that should have cancelled it is gone.",
    )
    max_clock_skew_s: float = _s(
        60.0,
        "Assumed bound on wall-clock differences between nodes (plus a hint delivery's duration); "
        "time-based safety rules leave this much room.",
    )

    # --- data model: buckets, TTL (README "Data model")
    bucket_sync_interval_s: float = _s(
        2.0,
        "How often a node pulls the bucket registry from one random live member (changes are "
        "also pushed to every member at once; this catches the ones that missed it).",
    )
    ttl_sweep_interval_s: float = _s(1.0, "How often expired keys this node stores are looked for and tombstoned.")
    ttl_sweep_max_keys: int = _s(500, "Most expired keys one sweep tombstones (the rest wait for the next sweep).")

    # --- RPC client
    connect_timeout_s: float = _s(1.0, "Deadline to open a TCP connection to a peer.")
    reconnect_min_s: float = _s(0.05, "First reconnect backoff; doubles up to reconnect_max_s.")
    reconnect_max_s: float = _s(2.0, "Cap of the reconnect backoff (with jitter).")

    # --- SWIM membership (LAN defaults; `kv cluster up` uses LOCAL_TIMINGS). The defaults
    # and docs live with the core's SwimConfig, which the node builds from these fields.
    probe_interval_s: float = swim_setting("probe_interval_s")
    probe_timeout_s: float = swim_setting("probe_timeout_s")
    indirect_checks: int = swim_setting("indirect_checks")
    suspicion_mult: float = swim_setting("suspicion_mult")
    suspicion_max_timeout_mult: float = swim_setting("suspicion_max_timeout_mult")
    retransmit_mult: int = swim_setting("retransmit_mult")
    push_pull_interval_s: float = swim_setting("push_pull_interval_s")
    awareness_max_multiplier: int = swim_setting("awareness_max_multiplier")
    gossip_max_packet_bytes: int = swim_setting("gossip_max_packet_bytes")
    gossip_interval_s: float = swim_setting("gossip_interval_s")
    gossip_nodes: int = swim_setting("gossip_nodes")
    lifeguard: bool = swim_setting("lifeguard")
    dampen_penalty: float = swim_setting("dampen_penalty")
    dampen_suppress: float = swim_setting("dampen_suppress")
    dampen_reuse: float = swim_setting("dampen_reuse")
    dampen_half_life_s: float = swim_setting("dampen_half_life_s")
    dampen_max_penalty: float = swim_setting("dampen_max_penalty")

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

    # --- observability (README "Operating a cluster", docs/metrics.md)
    http_port: int = _s(
        0,
        "Port of the HTTP server for Prometheus /metrics and the dashboard (read-only, no keys or values, no auth); 0: off.",
    )
    http_host: str = _s("127.0.0.1", "Address the HTTP server binds to; loopback by default since it has no authentication.")
    log_format: str = _s("text", "Log lines as 'text' (human) or 'json' (one object a line: ts, level, node, logger, event, ...).")
    log_module_levels: str = _s(
        "", "Per-module log levels over --log-level, e.g. 'kvstore.gossip=DEBUG,kvstore.hints=WARNING'."
    )

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
        if self.storage_compression not in COMPRESSIONS:
            problems.append(
                f"storage_compression must be one of {', '.join(COMPRESSIONS)}, got {self.storage_compression!r}"
            )
        if self.log_format not in LOG_FORMATS:
            problems.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if not 0 <= self.http_port <= 65535:
            problems.append(f"http_port must be in 0..65535, got {self.http_port}")
        try:
            parse_module_levels(self.log_module_levels)
        except ConfigError as e:
            problems.append(str(e))
        if self.conflict not in CONFLICT_MODES:
            problems.append(f"conflict must be one of {', '.join(CONFLICT_MODES)}, got {self.conflict!r}")
        for name in (
            "max_key_bytes", "max_value_bytes", "max_frame_bytes", "hint_batch_keys",
            "handoff_batch_keys", "aae_exchanges_per_min", "aae_max_repairs_per_s",
            "max_record_bytes", "max_siblings", "warn_siblings", "hint_batch_bytes",
            "handoff_batch_bytes", "keys_list_rate_per_s", "keys_list_page_keys", "ttl_sweep_max_keys",
            "max_frame_depth", "max_frame_elements", "max_inflight_per_conn",
            "max_reply_buffer_bytes", "max_connections",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive")
        # A record (or a hint batch) that fits its own bound must still fit in one RPC frame
        # with its key and the call's envelope, or it could be stored but never replicated.
        room = self.max_frame_bytes - self.max_key_bytes - FRAME_ENVELOPE_BYTES
        for name in ("max_record_bytes", "hint_batch_bytes", "handoff_batch_bytes"):
            if getattr(self, name) > room:
                problems.append(
                    f"{name} ({getattr(self, name)}) must be at most max_frame_bytes ({self.max_frame_bytes}) "
                    f"- max_key_bytes ({self.max_key_bytes}) - {FRAME_ENVELOPE_BYTES} bytes of envelope = {room}, "
                    "so that what it bounds still fits in one RPC frame"
                )
        if self.max_value_bytes > self.max_record_bytes:
            problems.append(
                f"max_value_bytes ({self.max_value_bytes}) must not exceed max_record_bytes "
                f"({self.max_record_bytes}): a single value would make a record no write may leave"
            )
        if self.warn_siblings > self.max_siblings:
            problems.append(f"warn_siblings ({self.warn_siblings}) must not exceed max_siblings ({self.max_siblings})")
        if self.tombstone_grace_s <= self.hint_max_age_s + self.max_clock_skew_s:
            problems.append(
                f"tombstone_grace_s ({self.tombstone_grace_s:g}) must exceed hint_max_age_s "
                f"({self.hint_max_age_s:g}) + max_clock_skew_s ({self.max_clock_skew_s:g}): a hint "
                "delivered after the tombstone that superseded it was collected brings the deleted "
                "value back (lower hint_max_age_s or raise tombstone_grace_s)"
            )
        why = zone_problem(self.zone)
        if why is not None:
            problems.append(why)
        try:
            check_node_name(self.name)
        except ConfigError as e:
            problems.append(str(e))
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

    @property
    def limits(self) -> Limits:
        """What request parsing and write checks need, without the rest of the settings."""
        return Limits(
            self.max_key_bytes, self.max_value_bytes, self.n_replicas,
            max_record_bytes=self.max_record_bytes, max_siblings=self.max_siblings,
            warn_siblings=self.warn_siblings,
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def docs() -> list[tuple[str, str, Any]]:
        """(name, doc, default) for each setting, for `kv node start --help` and docs."""
        return [(f.name, f.metadata["doc"], f.default) for f in fields(Settings)]


def parse_module_levels(spec: str) -> dict[str, str]:
    """'kvstore.gossip=DEBUG, kvstore.hints=warning' -> {logger: LEVEL}; ConfigError if malformed."""
    out: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, level = item.partition("=")
        name, level = name.strip(), level.strip().upper()
        if not sep or not name or level not in LOG_LEVELS:
            raise ConfigError(
                f"log_module_levels: {item!r} is not LOGGER=LEVEL with LEVEL one of {', '.join(LOG_LEVELS)}"
            )
        out[name] = level
    return out


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


def node_flags(settings: Mapping[str, Any]) -> list[str]:
    """``kv node start`` flags that set ``settings`` (``probe_interval_s=0.2`` becomes
    ``--probe-interval-s 0.2``), for whatever starts node processes."""
    out: list[str] = []
    for name, value in settings.items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return out


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
