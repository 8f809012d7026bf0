"""Fleet deployment: the manifests parse and ask for what the agent needs, the image is built
from the wheel, and the container's entrypoint runs the agent on this host (inside a
namespace the test creates)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from morpheus.cli.main import build_parser
from morpheus.nf import get
from morpheus.nf.env import NFEnv
from morpheus.runtime.agent import DEFAULT_PIN_ROOT
from morpheus.runtime.server import SOCKET_DIR

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _daemonset() -> dict[str, Any]:
    (ds,) = [d for d in _documents() if d["kind"] == "DaemonSet"]
    return ds


def _agent(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_manifests_parse_and_the_daemonset_runs_on_the_host_network() -> None:
    kinds = {d["kind"] for d in _documents()}
    assert {"Namespace", "DaemonSet"} <= kinds
    ds = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True
    namespaces = {d["metadata"]["name"] for d in _documents() if d["kind"] == "Namespace"}
    assert ds["metadata"]["namespace"] in namespaces


def test_mounts_are_the_paths_the_agent_uses() -> None:
    ds = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _agent(ds)["volumeMounts"]}
    # Pins live under the host's bpffs, sockets under /run/morpheus: the same paths inside.
    for path in (str(DEFAULT_PIN_ROOT.parent), str(SOCKET_DIR)):
        assert path in mounts, path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    # Bidirectional propagation would need a privileged container; the agent mounts nothing.
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "HostToContainer"
    env = {e["name"]: e.get("value") for e in _agent(ds)["env"]}
    object_mount = next(m for p, m in mounts.items() if env["MORPHEUS_OBJECT"].startswith(p))
    source = volumes[object_mount["name"]]["configMap"]
    assert Path(env["MORPHEUS_OBJECT"]).name in {i["path"] for i in source["items"]}
    assert object_mount["readOnly"] is True


def test_capabilities_instead_of_privileged() -> None:
    security = _agent(_daemonset())["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # Measured with setpriv on this kernel (docs/deploy.md): without SYSLOG the watcher
    # cannot find bpf_map_release; without SYS_ADMIN adopting a pinned program (open by
    # id) fails with EPERM.
    assert set(security["capabilities"]["add"]) == {"BPF", "NET_ADMIN", "PERFMON", "SYSLOG",
                                                    "SYS_ADMIN"}


def test_probes_read_the_metrics_port_the_agent_is_given() -> None:
    agent = _agent(_daemonset())
    env = {e["name"]: e.get("value") for e in agent["env"]}
    port = int(env["MORPHEUS_METRICS_PORT"])
    assert agent["ports"][0]["containerPort"] == port
    for probe in ("livenessProbe", "startupProbe"):
        get = agent[probe]["httpGet"]
        assert (get["host"], get["path"], get["port"]) == ("127.0.0.1", "/metrics", port)


def test_args_and_env_are_options_the_cli_and_entrypoint_know() -> None:
    agent = _agent(_daemonset())
    # The args go to `morpheus run` after what the entrypoint sets: they must parse.
    args = build_parser().parse_args(["run", "prog.o", "--iface", "eth0", *agent["args"]])
    assert args.command == "run"
    script = ENTRYPOINT.read_text()
    known = set(re.findall(r"MORPHEUS_[A-Z_]+", script))
    for name in (e["name"] for e in agent["env"]):
        assert name in known, f"{name} is not read by the entrypoint"
    # Every `morpheus run` option the entrypoint passes exists.
    run_options = {a for action in build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
                   .choices["run"]._actions for a in action.option_strings}
    for option in re.findall(r"(--[a-z-]+) \"\$", script):
        assert option in run_options, option


def test_image_is_built_from_the_wheel_and_enters_through_the_entrypoint() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Containerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    text = "\n".join(lines)
    assert lines[0].startswith("FROM python:3.1")
    assert re.search(r"^COPY dist/morpheus_xdp-\*\.whl", text, re.M)
    assert "pip install --no-cache-dir /tmp/wheels/morpheus_xdp-" in text
    assert "clang" not in text  # the wheel carries the objects
    entry = json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
                       .removeprefix("ENTRYPOINT"))
    assert f"COPY deploy/entrypoint.sh {entry[0]}" in text
    assert "EXPOSE 9464" in text


def _entrypoint(env: dict[str, str], *args: str,
                prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.Popen([*prefix, "sh", str(ENTRYPOINT), *args],
                            env={"PATH": path, "HOME": os.environ.get("HOME", "/root"),
                                 **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _as_in_the_pod(namespace: str) -> tuple[str, ...]:
    """Enter the namespace as the pod's host network (setns only: /sys and the bpffs stay
    the host's, unlike `ip netns exec`), keeping only the DaemonSet's capabilities."""
    caps = ",".join(f"+{c.lower()}" for c in
                    _agent(_daemonset())["securityContext"]["capabilities"]["add"])
    return ("nsenter", f"--net=/run/netns/{namespace}", "setpriv",
            f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}",
            f"--ambient-caps=-all,{caps}", "--")


@pytest.mark.kernel
def test_entrypoint_runs_the_agent_with_the_daemonsets_capabilities_and_restarts() -> None:
    """Start, metrics, SIGTERM (the program stays), a second start that adopts it, stop
    with detach: what a pod's life and a rolling update do, with no capability but the
    manifest's."""
    name = f"ep{os.getpid()}"
    port = 20000 + os.getpid() % 20000
    env_vars = {"MORPHEUS_IFACE": "port2", "MORPHEUS_NF": "router", "MORPHEUS_NAME": name,
                "MORPHEUS_METRICS_PORT": str(port)}
    common = ("--interval", "0.3", "--log-level", "WARNING", "--no-measure-sampling-cost")
    with NFEnv.start("router") as env:
        prefix = _as_in_the_pod(env.namespace.name)
        try:
            for extra in ((), ("--detach-on-exit",)):
                proc = _entrypoint(env_vars, *common, *extra, prefix=prefix)
                try:
                    started = json.loads(proc.stdout.readline() or "{}")  # type: ignore[union-attr]
                    assert started == {"event": "running", "backend": "kernel", "name": name,
                                       "socket": f"{SOCKET_DIR}/{name}.sock",
                                       "metrics_port": port}, proc.stderr.read()  # type: ignore[union-attr]
                    with env.namespace.entered(), urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                        assert "morpheus_version" in r.read().decode()
                    assert (DEFAULT_PIN_ROOT / name / "link").exists()
                    proc.send_signal(signal.SIGTERM)
                    _out, err = proc.communicate(timeout=60)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                assert proc.returncode == 0, err
            assert not (DEFAULT_PIN_ROOT / name).exists()
        finally:
            shutil.rmtree(DEFAULT_PIN_ROOT / name, ignore_errors=True)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "set MORPHEUS_IFACE"),
    ({"MORPHEUS_IFACE": "eth0"}, "set MORPHEUS_OBJECT (a BPF object file) or MORPHEUS_NF"),
    ({"MORPHEUS_IFACE": "eth0", "MORPHEUS_NF": "nope"}, "MORPHEUS_NF=nope is not a built-in"),
    ({"MORPHEUS_IFACE": "eth0", "MORPHEUS_OBJECT": "/nonexistent/prog.o"},
     "cannot read the BPF object /nonexistent/prog.o"),
    # The object given directly: no `morpheus nf list` (a CLI start) for these two.
    ({"MORPHEUS_IFACE": "morpheus-none0", "MORPHEUS_OBJECT": __file__},
     "no interface morpheus-none0 in this network namespace"),
    ({"MORPHEUS_IFACE": "eth0", "MORPHEUS_OBJECT": __file__, "MORPHEUS_NETNS": "morpheus-none"},
     "no network namespace morpheus-none"),
    ({"MORPHEUS_IFACE": "eth0", "MORPHEUS_OBJECT": __file__,
      "MORPHEUS_MAPS": "/nonexistent/maps"}, "no directory /nonexistent/maps (MORPHEUS_MAPS)"),
    ({"MORPHEUS_IFACE": "eth0", "MORPHEUS_OBJECT": __file__, "MORPHEUS_MAPS": "/proc"},
     "/proc is not on a bpffs (it is 'proc')"),
])
def test_entrypoint_says_what_is_missing_before_starting(env: dict[str, str],
                                                         message: str) -> None:
    proc = _entrypoint(env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert message in err


def test_the_bpfman_example_adopts_bpfmans_maps_through_options_the_cli_knows() -> None:
    """deploy/kubernetes/bpfman/: the agent beside bpfman, on bpfman's map pins."""
    (ds,) = [d for d in yaml.safe_load_all(
        (DEPLOY / "kubernetes" / "bpfman" / "daemonset.yaml").read_text()) if d]
    assert ds["kind"] == "DaemonSet" and ds["spec"]["template"]["spec"]["hostNetwork"] is True
    agent = _agent(ds)
    env = {e["name"]: e.get("value") for e in agent["env"]}
    script = ENTRYPOINT.read_text()
    assert set(env) <= set(re.findall(r"MORPHEUS_[A-Z_]+", script))
    assert '--maps "$MORPHEUS_MAPS"' in script
    args = build_parser().parse_args(["run", "prog.o", "--iface", env["MORPHEUS_IFACE"],
                                      "--maps", env["MORPHEUS_MAPS"], *agent["args"]])
    assert args.maps == "/run/bpfman/fs/maps" and args.swap == "prog-array"
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    # bpfman's bpffs, read only, and the agent's own pin root and socket directory.
    bpfman = mounts["/run/bpfman/fs"]
    assert volumes[bpfman["name"]]["hostPath"]["path"] == "/run/bpfman/fs"
    assert bpfman["readOnly"] is True
    assert env["MORPHEUS_MAPS"].startswith("/run/bpfman/fs/")
    for path in (str(DEFAULT_PIN_ROOT.parent), str(SOCKET_DIR)):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    assert agent["securityContext"] == _agent(_daemonset())["securityContext"]


@pytest.mark.kernel
def test_entrypoint_beside_a_bpfman_stand_in_with_the_pods_capabilities() -> None:
    """MORPHEUS_MAPS on maps another owner pinned (`bpftool prog loadall ... pinmaps`, as
    bpfman lays them out), `--no-attach`: the agent starts under the DaemonSet's
    capabilities on those maps, pins its entry, and a stop with detach removes its own pins
    and none of the owner's."""
    name = f"epb{os.getpid()}"
    port = 20000 + (os.getpid() + 7) % 20000
    owner = Path(f"/sys/fs/bpf/mph_ep_bpfman_{os.getpid()}")
    owner.mkdir()
    try:
        subprocess.run(["bpftool", "prog", "loadall", str(get("router").object_path),
                        str(owner / "progs"), "pinmaps", str(owner / "maps"), "type", "xdp"],
                       check=True, capture_output=True)
        pins = sorted(p.name for p in (owner / "maps").iterdir())
        env_vars = {"MORPHEUS_IFACE": "port2", "MORPHEUS_NF": "router", "MORPHEUS_NAME": name,
                    "MORPHEUS_METRICS_PORT": str(port), "MORPHEUS_MAPS": str(owner)}
        with NFEnv.start("router") as env:
            proc = _entrypoint(env_vars, "--no-attach", "--detach-on-exit", "--log-level",
                               "WARNING", "--no-measure-sampling-cost",
                               prefix=_as_in_the_pod(env.namespace.name))
            try:
                started = json.loads(proc.stdout.readline() or "{}")  # type: ignore[union-attr]
                assert started.get("maps_dir") == str(owner / "maps"), proc.stderr.read()  # type: ignore[union-attr]
                assert started["entry"] == str(DEFAULT_PIN_ROOT / name / "entry")
                assert Path(started["entry"]).exists()
                proc.send_signal(signal.SIGTERM)
                _out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err
        assert not (DEFAULT_PIN_ROOT / name).exists()
        assert sorted(p.name for p in (owner / "maps").iterdir()) == pins
        assert (owner / "progs" / "xdp_router").exists()
    finally:
        shutil.rmtree(DEFAULT_PIN_ROOT / name, ignore_errors=True)
        shutil.rmtree(owner, ignore_errors=True)
