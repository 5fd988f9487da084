"""Runs last (file order): the suite must leave no managed container, network or volume.

Leak accounting is per host label, for the hosts this suite used (conftest.USED_HOSTS), and
never "everything on the engine" (other sessions share it). Every teardown records what its
host left into harness.LEDGER before it force-removes anything (force_remove_managed), so a
leak is seen even though the teardown then cleans it up. Here the hosts still alive (the
session worker's) are checked on every engine the suite used, and the ledger must be empty.
"""

from __future__ import annotations

import docker

from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import LEDGER, engine_name, record_leftovers


def test_no_managed_container_network_or_volume_is_left_behind(
    docker_client: docker.DockerClient,
) -> None:
    default = engine_name(docker_client)
    hosts = USED_HOSTS | {host for engine, host in LEDGER.checked if engine == default}
    for host in sorted(hosts):
        record_leftovers(docker_client, host, where="test_zz_leaks", settle_seconds=15)
    # Engines other than this one (host B's) are down by now: their fixtures recorded what
    # each of their hosts left before stopping them.
    leaks = list(LEDGER.leaks)
    LEDGER.reported = len(leaks)
    assert not leaks, "leaked:\n" + "\n".join(str(leak) for leak in leaks)
    assert hosts, "no host was used: the leak check checked nothing"
