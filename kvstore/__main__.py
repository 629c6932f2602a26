"""``python -m kvstore``: start a node, with exactly the flags of ``kv node start``.

This file is a program's entry point like the ``kv`` console script, not part of the library:
nothing in kvstore imports it, so the rule "cli imports kvstore, never the reverse" still
holds for every module a user of the library loads.
"""

from __future__ import annotations

from cli.node_cmds import start

if __name__ == "__main__":
    start.main(prog_name="python -m kvstore")
