"""Private Redis topologies for the tests: a three-node Redis Cluster, a Sentinel set (one
master, one replica, three sentinels), a TLS server with certificates made on the spot, and a
server with an ACL user. Everything runs on free loopback ports (never 6379), every wait for
readiness is bounded, and everything started is stopped on exit, whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import redis

from .redis_support import RedisServer, start_redis
from .support import eventually, free_port

READY_SECONDS = 30.0
MASTER_NAME = "mymaster"
# What a server or topology still starting up raises: "not yet".
NOT_UP_YET = (redis.RedisError, OSError)


def admin(port: int, **options: object) -> redis.Redis:
    """A plain synchronous client for setting a topology up and inspecting it."""
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True, **options)


# -- Redis Cluster ---------------------------------------------------------------------------


@dataclass
class ClusterTopology:
    servers: list[RedisServer]

    @property
    def nodes(self) -> list[str]:
        """``host:port`` of every node: the seed list of the proxy's ``redis.cluster.nodes``."""
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def wait_failed_over(self, key: str, dead: RedisServer) -> RedisServer:
        """Until a replica of the dead node serves ``key``'s slot; answers that node."""
        alive = [s for s in self.servers if s is not dead]
        eventually(
            lambda: self.find_owner(key, alive) is not None,
            what="no replica took the dead node's slots over",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )
        owner = self.find_owner(key, alive)
        assert owner is not None
        return owner

    def owner_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot."""
        owner = self.find_owner(key, self.servers)
        if owner is None:
            raise AssertionError(f"no node serves {key!r}")
        return owner

    @staticmethod
    def find_owner(key: str, servers: list[RedisServer]) -> RedisServer | None:
        """The one of ``servers`` that serves ``key``'s slot (the others answer MOVED)."""
        for server in servers:
            try:
                admin(server.port).exists(key)
            except redis.exceptions.MovedError:
                continue
            return server
        return None


@contextlib.contextmanager
def start_cluster(directory: Path, count: int = 3, replicas: int = 0) -> Iterator[ClusterTopology]:
    """``count`` masters with every slot assigned (``redis-cli --cluster create``), each with
    ``replicas`` replicas; yields once every node reports ``cluster_state:ok``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not on PATH (it comes with redis-server's package)")

    def node_args(port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(free_port()),  # the bus port: port + 10000 may be taken
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip

    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(start_redis(directory, port_args=node_args))
            for _ in range(count * (1 + replicas))
        ]
        topology = ClusterTopology(servers)
        create = ["--cluster", "create", *topology.nodes, "--cluster-replicas", str(replicas)]
        subprocess.run(
            [cli, *create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_SECONDS,
        )

        def replicas_in_sync() -> bool:
            roles = [admin(s.port).info("replication") for s in servers]
            synced = [r for r in roles if r.get("master_link_status") == "up"]
            return len(synced) == count * replicas

        # A replica that never synced with its master cannot take over from it.
        eventually(
            replicas_in_sync,
            what="the cluster's replicas never synced",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )
        for server in servers:
            eventually(
                lambda port=server.port: (
                    admin(port).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                ),
                what=f"cluster node {server.port} did not report cluster_state:ok",
                timeout=READY_SECONDS,
                ignoring=NOT_UP_YET,
            )
        yield topology


# -- Sentinel ----------------------------------------------------------------------------------


@dataclass
class SentinelTopology:
    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]
    master_name: str = MASTER_NAME

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of the sentinels: the proxy's ``redis.sentinel.addresses``."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self) -> int:
        """The master's port as the sentinels see it now."""
        for sentinel in self.sentinels:
            if sentinel.running:
                host_port = admin(sentinel.port).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                return int(host_port[1])
        raise AssertionError("no sentinel is running")

    def wait_replicated(self) -> None:
        """Until the replica has everything the master wrote (its offset reached the
        master's), so a failover right after loses nothing."""
        master = admin(self.master.port)
        eventually(
            lambda: master.execute_command("WAIT", 1, 1000) >= 1,
            what="the replica never acknowledged the master's writes",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )

    def cut_replication(self) -> None:
        """From now on the replica gets nothing more from the master: its link is cut and it
        may not sync again (what a lagging replica is when the master dies). Pausing the
        replica would not do: the master's writes would wait in its socket buffer."""
        master = admin(self.master.port)
        master.execute_command("ACL", "SETUSER", "default", "-psync", "-sync", "-replconf")
        master.execute_command("CLIENT", "KILL", "TYPE", "replica")
        eventually(
            lambda: admin(self.replica.port).info("replication")["master_link_status"] == "down",
            what="the replica never lost its link to the master",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )

    def wait_promoted(self) -> None:
        """Until the sentinels name the replica as master and it accepts writes."""

        def promoted() -> bool:
            role = admin(self.replica.port).info("replication")["role"]
            return self.master_port() == self.replica.port and role == "master"

        eventually(
            promoted,
            what="the sentinels never promoted the replica",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )


@contextlib.contextmanager
def start_sentinel_set(directory: Path, down_after_ms: int = 1000) -> Iterator[SentinelTopology]:
    """A master, a replica of it and three sentinels watching them (quorum 2). Yields once the
    replica is in sync and every sentinel knows the replica and the other two sentinels."""
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(start_redis(directory))
        replica = stack.enter_context(
            start_redis(directory, ["--replicaof", "127.0.0.1", str(master.port)])
        )
        eventually(
            lambda: admin(replica.port).info("replication")["master_link_status"] == "up",
            what="the replica never synced with the master",
            timeout=READY_SECONDS,
            ignoring=NOT_UP_YET,
        )
        sentinels = []
        for index in range(3):
            config = directory / f"sentinel-{index}.conf"
            config.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            sentinels.append(
                stack.enter_context(start_redis(directory, ["--sentinel"], config=config))
            )
        topology = SentinelTopology(master, replica, sentinels)
        for sentinel in sentinels:
            eventually(
                partial(_knows_everyone, admin(sentinel.port)),
                what=f"sentinel {sentinel.port} never found the replica and the other sentinels",
                timeout=READY_SECONDS,
                ignoring=NOT_UP_YET,
            )
        yield topology


def _knows_everyone(sentinel: redis.Redis) -> bool:
    replicas = sentinel.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
    others = sentinel.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
    return len(replicas) == 1 and len(others) == 2


# -- TLS and ACL -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    made with the ``openssl`` binary (skips the test when it is missing)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is not on PATH: cannot make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=gemini-breaker test CA")  # fmt: skip
    files = {}
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext_file = directory / f"{name}.ext"
        ext_file.write_text(extensions)
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN=gemini-breaker test {name}")  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2",
            "-extfile", str(ext_file))  # fmt: skip
        files[name] = (cert, key)
    return TlsFiles(ca, *files["server"], *files["client"])


@dataclass
class TlsServer:
    server: RedisServer
    tls_port: int
    files: TlsFiles

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"


def tls_supported() -> bool:
    """Whether this redis-server was built with TLS (Debian's is)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return False
    probe = subprocess.run(
        [binary, "--tls-port", "0", "--port", "0", "--test-memory", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "not supported" not in (probe.stdout + probe.stderr).lower()


@contextlib.contextmanager
def start_tls_redis(directory: Path, *, require_client_cert: bool = True) -> Iterator[TlsServer]:
    """A redis-server answering TLS on its own port (the plain port stays for the readiness
    check), verifying clients against the test CA when ``require_client_cert``."""
    files = make_tls_files(directory)
    tls_port = free_port()
    args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(files.server_cert),
        "--tls-key-file", str(files.server_key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "yes" if require_client_cert else "no",
    ]  # fmt: skip
    with start_redis(directory, args) as server:
        yield TlsServer(server, tls_port, files)


ACL_USER, ACL_PASSWORD = "breaker", "s3cret-acl-password"


@contextlib.contextmanager
def start_acl_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server whose default user is off: only ``ACL_USER`` with ``ACL_PASSWORD`` may
    connect, limited to the proxy's keys and channels."""
    args = [
        "--user", "default", "off",
        "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~gb:*", "&gb:*", "+@all",
    ]  # fmt: skip
    with start_redis(directory, args) as server:
        yield server
