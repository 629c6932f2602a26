"""The CLI's fast path names RPC methods without importing kvstore.core.messages (start-up):
they must stay the names messages.py defines."""

from cli import main
from kvstore.core import messages as m


def test_fast_path_method_names_are_the_protocols() -> None:
    assert (main.PUT, main.DELETE, main.GET_MARKED) == (m.PUT, m.DELETE, m.GET_MARKED)
