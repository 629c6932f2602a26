"""The harness's one error, a branch of kvstore's hierarchy (kvstore.errors.KVError).

Bad options are kvstore's ConfigError; HarnessError is the environment failing the harness
(iptables refused a rule, a node never became ready, a namespace could not be made).
"""

from __future__ import annotations

from kvstore.errors import ConfigError, KVError

__all__ = ["ConfigError", "HarnessError"]


class HarnessError(KVError):
    code = "harness"
