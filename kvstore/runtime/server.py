"""Process entry for one node: event loop choice, logging, signals, graceful stop.

SIGTERM and SIGINT stop the node gracefully (exit status 0); a second signal exits at once.
Startup failures (bad config, a store that cannot be opened, a port in use) are one log
line and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from kvstore.config import Settings
from kvstore.errors import KVError

log = logging.getLogger("kvstore.server")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# Requests allocate many short-lived containers (decoded frames, versions, futures); at the
# default threshold (700) the young generation is collected every few requests, and each
# older-generation pass walks the whole in-memory table. Objects alive after start-up
# (the loaded table, the ring, the code) are frozen out of collection altogether.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def install_loop() -> str:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep running without it
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(settings: Settings) -> int:
    from kvstore.runtime.node import Node

    try:
        node = Node(settings)
    except KVError as e:
        log.error("node %s failed to start: %s", settings.name, e)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except (KVError, OSError) as e:
        log.error("node %s failed to start: %s", settings.name, e)
        await node.stop()
        return 1
    tune_gc()
    exit_wait = asyncio.ensure_future(node.exit_requested.wait())
    stop_wait = asyncio.ensure_future(stop.wait())
    await asyncio.wait([exit_wait, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    exit_wait.cancel()
    stop_wait.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A second signal during a slow stop exits at once.
        loop.add_signal_handler(sig, lambda: sys.exit(1))
    await node.stop()
    return RESTART if node.restart_requested else 0


# serve() asks run() to re-execute the process (after the loop is closed and every file and
# socket of the old node is released).
RESTART = -1


def reexec() -> None:
    """Replace this process with a fresh run of the same command line: same pid, so any
    supervisor (kv cluster up, systemd, a container runtime) sees nothing happen, and the
    installed code, which may be newer, is what runs."""
    argv = list(sys.orig_argv)
    print(f"restarting: exec {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execv(sys.executable, argv)


def run(settings: Settings, log_level: str = "INFO") -> int:
    setup_logging(log_level)
    loop_name = install_loop()
    log.info("starting node %s on %s (%s loop)", settings.name, settings.listen, loop_name)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = loop.run_until_complete(serve(settings))
    # Everything that matters is durable and closed by now. Closing the loop would wait for
    # its worker threads, and one stuck in a DNS lookup can hold the process for minutes (a
    # container runtime then SIGKILLs it): exit (or re-exec) without that wait.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == RESTART:
        reexec()
    os._exit(code)
