"""What tests/conftest.py promises every test: no network, no user cache, and MNIST found through $VAEKIT_DATA."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import conftest


@pytest.mark.parametrize("address", [("203.0.113.7", 80), ("2001:db8::1", 443)])  # documentation-only networks
def test_a_connection_beyond_this_machine_is_refused_at_once(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(conftest.NetworkBlocked, match="network"):
        s.connect(address)
    with pytest.raises(conftest.NetworkBlocked):
        socket.create_connection(address, timeout=1)


def test_names_are_not_looked_up():
    with pytest.raises(conftest.NetworkBlocked, match=r"look up 'example\.com'"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(OSError):  # what urllib and friends see: an OSError, as for a machine offline
        socket.create_connection(("huggingface.co", 443), timeout=1)


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        got = []
        t = threading.Thread(target=lambda: got.append(server.accept()[0].recv(5)))
        t.start()
        with socket.create_connection(("localhost", port), timeout=5) as c:
            c.sendall(b"hello")
        t.join(5)
    assert got == [b"hello"]


def test_vaekit_data_is_hidden_from_tests_and_given_by_the_fixture(shared_data):
    assert "VAEKIT_DATA" not in os.environ and os.environ["VAEKIT_CACHE"].endswith("cache")
    assert shared_data == conftest.SHARED_DATA and (shared_data / "mnist").is_dir()
