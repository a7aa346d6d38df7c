"""A real deployment: SuperLink and SuperNodes as separate processes, over TLS with
node authentication, started by the scripts the README gives users.

Run twice: on loopback, and across hosts made of Linux network namespaces (each
SuperNode, the SuperLink and the operator running `flwr` on its own network host,
the certificate naming the SuperLink's address there). The deployments are slow
(`make test-all`); the checks of the scripts and of the namespace clean-up are not.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spry.config import RunConfig
from spry.tasks import load_task

from .deployment import (
    ROOT,
    SCRIPTS,
    Network,
    Processes,
    free_port,
    remove_orphaned_namespaces,
)

NODES = 2
RUN_CONFIG = {
    "num-server-rounds": 2,
    "num-clients": NODES,
    "clients-per-round": NODES,
    "eval-clients-per-round": NODES,
    "max-train-examples": 64,
    "max-test-examples": 64,
    "lr": 0.01,
}
REFUSED = "No SuperNode found with the given public key"


def _netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"spryprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made.returncode == 0


def _run_config(results: Path) -> str:
    items = [f"{k}={v}" for k, v in RUN_CONFIG.items()]
    return " ".join([*items, f"results-dir='{results}'"])


def _deploy(tmp_path: Path, procs: Processes, net: Network | None) -> Path:
    """Bring up the federation, check the refusal, run 2 rounds; the run folder."""
    host = "127.0.0.1" if net is None else net.address("superlink")
    port = free_port()
    hosts = ["superlink", "operator", *(f"node{i}" for i in range(NODES + 1))]
    names = {h: None if net is None else net.namespace(h) for h in hosts}
    certs = tmp_path / "certs"
    subprocess.run(
        [SCRIPTS / "make_certs.sh", certs, "--nodes", str(NODES + 1), host],
        check=True, capture_output=True,
    )  # fmt: skip

    procs.start("superlink", [SCRIPTS / "superlink.sh", certs, host, str(port)],
                netns=names["superlink"])  # fmt: skip
    procs.wait_for("superlink", r"Uvicorn running on https://")

    # The operator names the SuperLink in its own Flower config and registers keys.
    operator = {"FLWR_HOME": str(tmp_path / "operator-home")}
    procs.run("connection", [SCRIPTS / "flower_connection.sh", "spry-tls",
              f"{host}:{port}", certs / "ca.crt"], **operator)  # fmt: skip
    for i in range(NODES):
        out = procs.run(f"register-{i}", ["flwr", "supernode", "register",
                        certs / f"supernode-{i}.pub", "spry-tls"],
                        netns=names["operator"], **operator)  # fmt: skip
        assert "registered successfully" in out

    def supernode(i: int) -> None:
        ca, key = certs / "ca.crt", certs / f"supernode-{i}"
        procs.start(f"node{i}", [SCRIPTS / "supernode.sh", ca, key, str(i % NODES),
                    str(NODES), f"{host}:{port}", str(free_port())],
                    netns=names[f"node{i}"],
                    FLWR_HOME=str(tmp_path / f"node{i}-home"))  # fmt: skip

    for i in range(NODES):
        supernode(i)
        procs.wait_for(f"node{i}", r"SuperNode ID: \d+")

    # A SuperNode whose key nobody registered is turned away by the SuperLink.
    supernode(NODES)
    intruder = procs.started[f"node{NODES}"]
    intruder.wait(timeout=120)
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in procs.log(f"node{NODES}")
    assert REFUSED in procs.log("superlink")

    results = tmp_path / "results"
    out = procs.run("flwr-run", ["flwr", "run", ROOT, "spry-tls", "--stream",
                    "--run-config", _run_config(results)],
                    netns=names["operator"], timeout=900, **operator)  # fmt: skip
    assert "Discovered 2 nodes holding partitions 0..1" in out
    (run_dir,) = results.iterdir()
    return run_dir


def _check_run(run_dir: Path) -> None:
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row in rows[1:]:  # metrics the two clients sent back
        assert int(row["clients"]) == NODES
        assert int(row["dropped"]) == 0
        assert float(row["coverage-trained"]) == 1.0
        assert np.isfinite(float(row["train-loss"]))
        assert 0.0 <= float(row["federated-accuracy"]) <= 1.0
        assert float(row["client-peak-mib"]) > 0

    final = dict(np.load(run_dir / "final-weights.npz"))
    initial = load_task(RunConfig.from_run_config(RUN_CONFIG)).model().state()
    assert set(final) == set(initial)
    assert all(np.all(np.isfinite(v)) for v in final.values())
    changed = [n for n in final if not np.array_equal(final[n], initial[n])]
    assert len(changed) == len(final), "every trainable tensor was trained"


@pytest.mark.slow  # a SuperLink, two SuperNodes and a 2-round run, twice
@pytest.mark.parametrize("network", ["loopback", "netns"])
def test_superlink_and_two_supernodes_over_tls_with_node_auth(network, tmp_path):
    if network == "netns" and not _netns_available():
        pytest.skip("network namespaces need root and iproute2")
    procs = Processes(logs=tmp_path)
    net = None
    if network == "netns":
        net = Network(["superlink", "operator", *(f"node{i}" for i in range(3))])
    try:
        if net is not None:
            net.up()
        run_dir = _deploy(tmp_path, procs, net)
        _check_run(run_dir)
    finally:
        survivors = procs.stop_all()
        leftover = net.down() if net is not None else []
    assert survivors == [], f"processes left running: {survivors}"
    assert leftover == [], f"network namespaces left: {leftover}"


def test_network_cleanup_also_on_failure():
    """A failure half-way through bringing the hosts up still removes them all."""
    if not _netns_available():
        pytest.skip("network namespaces need root and iproute2")
    net = Network(["a", "b"], subnet="10.231.1")
    net.hosts = ["a", "b", "a"]  # the third veth reuses a name: `ip` fails there
    with pytest.raises(RuntimeError, match="ip "):
        try:
            net.up()
        finally:
            leftover = net.down()
    assert len(net.created) >= 3 and leftover == []


def test_scripts_refuse_bad_arguments(tmp_path):
    """Each deployment script says what is wrong in one line and exits 2."""
    cases = [
        [SCRIPTS / "superlink.sh", tmp_path],  # no certificates there
        [SCRIPTS / "supernode.sh", tmp_path / "ca.crt", "k", "0", "2", "h:1"],
        [SCRIPTS / "flower_connection.sh", "x", "h:1", tmp_path / "missing.crt"],
        [SCRIPTS / "make_certs.sh", tmp_path, "--nodes", "two"],
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for argv in cases:
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert result.stderr.strip(), argv


def test_namespaces_of_a_killed_test_run_are_removed_by_the_next():
    """SIGKILL skips `finally`: the next run deletes what the dead one left."""
    if not _netns_available():
        pytest.skip("network namespaces need root and iproute2")
    make_and_die = (
        "import os, signal, subprocess\n"
        "subprocess.run(['ip', 'netns', 'add', f'spry{os.getpid()}-x'], check=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", make_and_die])
    assert child.wait() == -9
    orphan = f"spry{child.pid}-x"
    assert orphan in _namespaces()
    assert orphan in remove_orphaned_namespaces()
    assert orphan not in _namespaces()


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
