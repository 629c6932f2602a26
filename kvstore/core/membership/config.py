"""The SWIM settings the pure core needs, as one frozen value.

The runtime builds it from :class:`kvstore.config.Settings` with :meth:`SwimConfig.from_settings`
(duck-typed, so the core never imports the module that reads files and the environment).

Formulas (N = members not dead or left, this node included; P = probe_interval_s):
    suspicion min      = suspicion_mult × max(1, log10(N + 1)) × P
    suspicion max      = suspicion_max_timeout_mult × suspicion min
    timeout after C independent confirmations (Lifeguard), K = suspicion_mult − 2 expected
    (K = 0 when N − 2 < K, i.e. too few members to expect any; then the timeout is the min):
                         max(min, max − (max − min) · ln(C + 1) / ln(K + 1))
    retransmit limit   = retransmit_mult × ceil(log10(N + 1))
    probe period       = P × (1 + awareness score), probe timeout likewise
    gossip             while updates are queued, every gossip_interval_s a gossip-only packet
                       to gossip_nodes random live members (as memberlist does besides
                       piggybacking on probes; gossip_nodes = 0 leaves piggybacking only)
    awareness score    in 0 .. awareness_max_multiplier − 1

With ``lifeguard=False`` the core runs classic SWIM for comparison: no local health (score
stays 0), no nacks, no buddy system, and a fixed suspicion timeout equal to its minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from kvstore.errors import ConfigError

__all__ = ["SwimConfig", "swim_setting"]


def _s(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class SwimConfig:
    # The home of these defaults and docs: kvstore.config.Settings takes its SWIM settings
    # from here (the core cannot import that module, which reads files and the environment).
    probe_interval_s: float = _s(1.0, "Protocol period: one member probed per period.")
    probe_timeout_s: float = _s(0.5, "Wait for an ack before asking others (ping-req).")
    indirect_checks: int = _s(3, "k: members asked to probe indirectly.")
    suspicion_mult: float = _s(4.0, "Suspicion timeout multiplier (formula above).")
    suspicion_max_timeout_mult: float = _s(6.0, "Upper bound of the suspicion timeout, × its minimum.")
    retransmit_mult: int = _s(4, "λ: each gossip update is piggybacked about λ·log(N+1) times.")
    push_pull_interval_s: float = _s(30.0, "Full-state exchange with one random member every this often.")
    awareness_max_multiplier: int = _s(8, "Lifeguard: cap of the local health score (probe stretch).")
    gossip_max_packet_bytes: int = _s(1400, "Largest UDP packet sent (keeps under a safe MTU).")
    dampen_penalty: float = _s(1.0, "Flap dampening: penalty added on each state change.")
    dampen_suppress: float = _s(3.0, "Above this penalty a member's changes stop moving routing.")
    dampen_reuse: float = _s(1.0, "Below this penalty a suppressed member is used again.")
    dampen_half_life_s: float = _s(30.0, "Half-life of the dampening penalty.")
    dampen_max_penalty: float = _s(6.0, "Cap of the dampening penalty.")
    gossip_interval_s: float = _s(0.2, "While updates are queued, a gossip-only packet goes out this often.")
    gossip_nodes: int = _s(3, "Members each gossip-only packet goes to (0: piggyback on probes only).")
    lifeguard: bool = _s(True, "Lifeguard extensions (local health, nacks, buddy system, dynamic suspicion).")

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in (
            "probe_interval_s",
            "probe_timeout_s",
            "push_pull_interval_s",
            "dampen_half_life_s",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if self.probe_timeout_s >= self.probe_interval_s:
            # The indirect probe needs the rest of the period after the direct timeout.
            problems.append("probe_timeout_s must be shorter than probe_interval_s")
        if self.gossip_nodes < 0:
            problems.append("gossip_nodes must be >= 0")
        if self.indirect_checks < 0:
            problems.append("indirect_checks must be >= 0")
        if self.suspicion_mult < 1:
            problems.append("suspicion_mult must be >= 1")
        if self.suspicion_max_timeout_mult < 1:
            problems.append("suspicion_max_timeout_mult must be >= 1")
        if self.retransmit_mult < 1:
            problems.append("retransmit_mult must be >= 1")
        if self.awareness_max_multiplier < 1:
            problems.append("awareness_max_multiplier must be >= 1")
        if self.gossip_max_packet_bytes < 512:
            # Below this a full alive update with metadata may not fit in any packet.
            problems.append("gossip_max_packet_bytes must be >= 512")
        if not 0 <= self.dampen_reuse <= self.dampen_suppress <= self.dampen_max_penalty:
            problems.append(
                "dampening needs 0 <= dampen_reuse <= dampen_suppress <= dampen_max_penalty"
            )
        if self.dampen_penalty < 0:
            problems.append("dampen_penalty must be >= 0")
        if problems:
            raise ConfigError("invalid SWIM settings: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SwimConfig:
        """Take every field this class has from `settings` (any object with those attributes)."""
        values = {
            f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)
        }
        values.update(overrides)
        return cls(**values)

    # --- formulas

    def suspicion_min_s(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(n + 1)) * self.probe_interval_s

    def suspicion_max_s(self, n: int) -> float:
        if not self.lifeguard:
            return self.suspicion_min_s(n)
        return self.suspicion_max_timeout_mult * self.suspicion_min_s(n)

    def expected_confirmations(self, n: int) -> int:
        k = int(self.suspicion_mult - 2)
        if not self.lifeguard or n - 2 < k:
            return 0
        return max(0, k)

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * math.ceil(math.log10(n + 1))


_FIELDS = {f.name: f for f in fields(SwimConfig)}


def swim_setting(name: str) -> Any:
    """A dataclass field with SwimConfig's default and doc for ``name``, for the settings
    class that also holds the node's other settings."""
    f = _FIELDS[name]
    return field(default=f.default, metadata=f.metadata)
