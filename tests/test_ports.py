"""Port choice across localml commands: a port one command chose is not chosen by another until it is bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from localml_tasks import ports


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALML_LOCK_DIR", str(tmp_path / "locks"))


def _free_run(length: int = 8) -> int:
    """The first of `length` consecutive ports that are free here now."""
    for first in range(24000, 30000, length):
        if all(ports._is_free(port, set()) for port in range(first, first + length)):
            return first
    raise AssertionError("no free run of ports")


def test_commands_choosing_at_once_get_different_ports_until_they_exit(tmp_path):
    """The race a second project folder (or test suite) used to lose: both found the same port free and the
    server started second could not bind. Four live commands choose at the same moment, none binds."""
    first = _free_run()
    choose = ("import sys; from localml_tasks import ports; print(ports.pick(int(sys.argv[1]), set()), flush=True); "
              "sys.stdin.read()")  # alive, holding its reservation, until the test lets it go
    children = [subprocess.Popen([sys.executable, "-c", choose, str(first)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "LOCALML_LOCK_DIR": str(tmp_path / "locks")}) for _ in range(4)]
    try:
        chosen = [int(child.stdout.readline()) for child in children]  # type: ignore[union-attr]
    finally:
        for child in children:
            child.communicate(input="", timeout=60)
    assert sorted(chosen) == list(range(first, first + 4))
    assert ports.pick(first, set()) == first  # their reservations ended with them


def test_a_reservation_of_a_live_process_is_passed_over_and_ones_own_is_not(monkeypatch):
    first = _free_run()
    assert ports.pick(first, set()) == first
    assert ports.pick(first, set()) == first  # this process may choose its own reserved port again
    monkeypatch.setattr(os, "getpid", lambda: 1)  # now as another live process (pid 1 always lives)
    assert ports.pick(first, set()) == first + 1


def test_a_bound_port_and_a_docker_published_one_are_skipped():
    first = _free_run()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", first))
        listening.listen()
        assert ports.pick(first, {first + 1}) == first + 2


def test_a_damaged_reservations_file_is_started_afresh(tmp_path):
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "ports.json").write_text("{not json")
    first = _free_run()
    assert ports.pick(first, set()) == first


def test_ports_held_for_a_live_process_stay_reserved_past_the_choice_window(monkeypatch):
    """A process-mode supervisor's ports: its server may crash and start again on them long after they were chosen;
    no other command takes them while the supervisor lives, and they are free once it has gone."""
    first = _free_run()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, text=True)
    try:
        ports.hold_for(holder.pid, [first, first + 1])
        monkeypatch.setattr(ports, "RESERVED_S", 0.0)  # long after the choice
        assert ports.pick(first, set()) == first + 2
    finally:
        holder.communicate(input="", timeout=60)
    assert ports.pick(first, set()) == first
