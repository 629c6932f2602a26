"""The asyncio driver of the SWIM core: a UDP socket, a timer, and push-pull over TCP.

All protocol decisions live in :class:`kvstore.core.membership.Swim`; this module only feeds
it datagrams and ``loop.time()`` and carries out the :class:`Effects` it returns: send
packets, call ``on_change`` for membership events, run push-pulls, re-arm the timer.

The UDP socket binds the same port number as the node's TCP RPC (UDP and TCP ports are
separate namespaces). Push-pull goes through the node's RPC as method ``gossip.push_pull``:

    gossip = Gossip(SwimConfig.from_settings(settings), settings.name, settings.advertised,
                    settings.listen, random.Random(), push_pull_via(rpc_client), on_change)
    server = RpcServer({**other_handlers, **rpc_handlers(gossip)})
    await server.start(host, port); await gossip.start(); await gossip.join(settings.seeds)

Garbage datagrams are counted and dropped; an exception in ``on_change`` is logged and
does not stop the protocol. With a keyring every datagram is sealed (AES-256-GCM, see
kvstore/runtime/security.py) and one that no key opens (forged, altered, or from a cluster
with another secret) is dropped before the SWIM core sees it, counted as
``datagrams_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from kvstore.config import parse_addr
from kvstore.core.membership import Effects, MemberEvent, MemberInfo, MetaValue, Swim, SwimConfig
from kvstore.errors import ConfigError
from kvstore.runtime.resolver import Resolver, family_of
from kvstore.runtime.rpc import RpcClient, as_bytes
from kvstore.runtime.security import Keyring

__all__ = ["PUSH_PULL_METHOD", "Gossip", "PushPull", "push_pull_via", "rpc_handlers"]

log = logging.getLogger("kvstore.gossip")

PUSH_PULL_METHOD = "gossip.push_pull"
PushPull = Callable[[str, bytes], Awaitable[bytes]]
# Never re-arm the timer closer than this: a bug that keeps asking for "now" must not spin.
MIN_TIMER_S = 0.001


def push_pull_via(client: RpcClient, timeout_s: float = 2.0) -> PushPull:
    """A push-pull function calling ``gossip.push_pull`` on the peer's TCP RPC."""

    async def call(addr: str, state: bytes) -> bytes:
        return as_bytes(await client.call(addr, PUSH_PULL_METHOD, [state], timeout_s), "state")

    return call


def rpc_handlers(gossip: Gossip) -> dict[str, Callable[..., Any]]:
    """The RPC methods a node exposes for its gossip (merge the peer's state, answer ours)."""

    def push_pull(state: Any) -> bytes:
        return gossip.merge_remote_state(as_bytes(state, "state"))

    return {PUSH_PULL_METHOD: push_pull}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Gossip) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: UDP gives no delivery promise, SWIM copes.
        log.debug("gossip socket error: %s", exc)


class Gossip:
    def __init__(
        self,
        config: SwimConfig,
        name: str,
        advertise: str,
        bind: str,
        rng: random.Random,
        push_pull: PushPull | None,
        on_change: Callable[[MemberEvent], None] | None = None,
        *,
        meta: Mapping[str, MetaValue] | None = None,
        push_pull_timeout_s: float = 5.0,
        keyring: Keyring | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._keyring = keyring
        # Shared with the node's RPC client (one cache of peer names); made at start() when
        # not given, for the family of the bound socket.
        self._resolver = resolver
        self._own_resolver: Resolver | None = None
        self.config = config
        self.name = name
        self._advertise = advertise
        self._bind = bind
        self._rng = rng
        self._push_pull_fn = push_pull
        self._on_change = on_change
        self._meta = dict(meta or {})
        self._pp_timeout = push_pull_timeout_s
        self._swim: Swim | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pp_inflight: set[str] = set()
        self._stopped = False
        self.counters: dict[str, int] = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "send_errors": 0,
            "push_pulls_ok": 0,
            "push_pulls_failed": 0,
            "push_pulls_served": 0,
            "handler_errors": 0,
            "datagrams_refused": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the UDP socket and start probing (nobody is known until join or a ping)."""
        if self._swim is not None:
            raise RuntimeError("gossip already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        host, port = parse_addr(self._bind)
        family = family_of(host)
        if self._resolver is None:
            self._resolver = self._own_resolver = Resolver(family)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port), family=family
        )
        self._transport = transport  # type: ignore[assignment]
        bound_port = transport.get_extra_info("sockname")[1]
        adv_host, adv_port = parse_addr(self._advertise)
        if adv_port == 0:
            # Bound to an ephemeral port (tests): advertise the one we got.
            self._advertise = _join_addr(adv_host, bound_port)
        self._swim = Swim(
            self.config, self.name, self._advertise, self._rng, loop.time(), meta=self._meta
        )
        self._apply(self._swim.tick(loop.time()))
        log.info("gossip %s on udp %s (advertised %s)", self.name, self._bind, self._advertise)

    async def join(self, seeds: Iterable[str]) -> int:
        """Push-pull with every seed (except ourselves); returns how many answered."""
        targets = list(dict.fromkeys(s for s in seeds if s and s != self._advertise))
        if not targets:
            return 0
        results = await asyncio.gather(*(self._push_pull(s) for s in targets))
        return sum(results)

    async def leave(self, linger_s: float | None = None) -> None:
        """Tell the cluster we leave (state `left`), then give the notice time to spread."""
        swim = self._require()
        self._apply(swim.leave(self._now()))
        await asyncio.sleep(self._linger(linger_s))

    async def announce_restart(self, linger_s: float | None = None) -> None:
        """Tell the cluster we are about to restart so it routes around us meanwhile."""
        swim = self._require()
        self._apply(swim.announce_restart(self._now()))
        await asyncio.sleep(self._linger(linger_s))

    async def stop(self) -> None:
        """Close the socket and stop the timer (idempotent; does not announce anything)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._own_resolver is not None:
            self._own_resolver.close()

    # ------------------------------------------------------------------ queries and updates

    @property
    def advertise(self) -> str:
        return self._advertise

    @property
    def swim(self) -> Swim:
        """The core state machine (read it; drive it only through this object)."""
        return self._require()

    def members(self) -> list[MemberInfo]:
        """Every known member, this node included (its entry carries the awareness score)."""
        return self._require().members()

    def member(self, name: str) -> MemberInfo | None:
        return self._require().member(name)

    def set_meta(self, meta: Mapping[str, MetaValue]) -> None:
        """Publish new metadata (e.g. the ring version); raises InvalidRequest if unfit."""
        self._meta = dict(meta)
        if self._swim is not None:
            self._apply(self._swim.set_meta(meta, self._now()))

    def local_state(self) -> bytes:
        return self._require().local_state()

    def merge_remote_state(self, data: bytes) -> bytes:
        """Push-pull, answering side: merge the peer's state, return ours (after the merge,
        so a refutation it provoked is already in it). Raises ProtocolError on garbage."""
        swim = self._require()
        self._apply(swim.merge_state(data, self._now()))
        self.counters["push_pulls_served"] += 1
        return swim.local_state()

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        if self._swim is not None:
            out.update(self._swim.stats)
        return out

    # ------------------------------------------------------------------ internals

    def _require(self) -> Swim:
        if self._swim is None:
            raise RuntimeError("gossip not started")
        return self._swim

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _linger(self, linger_s: float | None) -> float:
        if linger_s is not None:
            return max(0.0, linger_s)
        return 2 * self.config.gossip_interval_s

    def _datagram(self, data: bytes, addr: Any) -> None:
        if self._swim is None or self._stopped:
            return
        self.counters["datagrams_in"] += 1
        if self._keyring is not None:
            opened = self._keyring.open(data)
            if opened is None:
                self.counters["datagrams_refused"] += 1
                log.debug("gossip: dropped a datagram from %r that no key opens", addr)
                return
            data = opened
        try:
            src = _join_addr(str(addr[0]), int(addr[1]))
            self._apply(self._swim.receive(src, data, self._now()))
        except Exception:
            # Swim.receive drops garbage itself; this guards the socket against our own bugs.
            self.counters["handler_errors"] += 1
            log.exception("gossip: error handling a datagram from %r", addr)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._swim is None or self._stopped:
            return
        try:
            self._apply(self._swim.tick(self._now()))
        except Exception:
            self.counters["handler_errors"] += 1
            log.exception("gossip: error in tick")
            self._arm(self._now() + self.config.probe_interval_s)

    def _apply(self, fx: Effects) -> None:
        if self._stopped:
            return
        for out in fx.messages:
            self._sendto(out.addr, out.data)
        for ev in fx.events:
            if self._on_change is not None:
                try:
                    self._on_change(ev)
                except Exception:
                    self.counters["handler_errors"] += 1
                    log.exception("gossip: on_change failed for %s", ev.member.name)
        for addr in fx.push_pull:
            self._spawn(self._push_pull(addr))
        self._arm(fx.next_tick)

    def _arm(self, when: float) -> None:
        if self._loop is None or self._stopped:
            return
        when = max(when, self._loop.time() + MIN_TIMER_S)
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _sendto(self, addr: str, data: bytes) -> None:
        if self._transport is None:
            return
        if self._keyring is not None:
            data = self._keyring.seal(data)
        try:
            self._transport.sendto(data, self._resolve(addr))
            self.counters["datagrams_out"] += 1
        except (OSError, ConfigError, ValueError) as e:
            self.counters["send_errors"] += 1
            log.debug("gossip: cannot send to %s: %s", addr, e)

    def _resolve(self, addr: str) -> Any:
        """The socket address for ``addr``, without waiting: names are looked up off the
        event loop by the resolver (a stalled DNS server must not freeze the node), which
        refreshes its answers as they age; until the first answer the datagram is dropped,
        which SWIM tolerates."""
        assert self._resolver is not None
        host, port = parse_addr(addr)
        addrs = self._resolver.cached(host, port)
        if not addrs:
            raise OSError(f"{host} is still being resolved")
        return addrs[0][1]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_pull(self, addr: str) -> bool:
        if self._push_pull_fn is None or self._swim is None or addr in self._pp_inflight:
            return False
        self._pp_inflight.add(addr)
        try:
            reply = await asyncio.wait_for(
                self._push_pull_fn(addr, self._swim.local_state()), self._pp_timeout
            )
            if self._stopped:
                return False
            self._apply(self._swim.merge_state(reply, self._now()))
            self.counters["push_pulls_ok"] += 1
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.counters["push_pulls_failed"] += 1
            log.debug("gossip: push-pull with %s failed: %s: %s", addr, type(e).__name__, e)
            return False
        finally:
            self._pp_inflight.discard(addr)


def _join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
