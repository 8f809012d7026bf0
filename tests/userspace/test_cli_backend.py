"""`--backend userspace` on the CLI: the reports keep their shape and say where they ran."""

from __future__ import annotations

import json

import pytest

from morpheus.cli.main import main

pytestmark = pytest.mark.kernel


def test_bench_on_the_userspace_backend_reports_like_the_kernel_one(capsys) -> None:
    from morpheus.nf import get

    obj = str(get("switch").object_path)
    code = main(["bench", obj, obj, "--nf", "switch", "--profile", "high", "--packets", "300",
                 "--rounds", "1", "--backend", "userspace", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["backend"] == "userspace"
    assert report["verdicts_match"] is True
    for key in ("A", "B"):
        entry = report[key]
        assert entry["ns_per_packet"]["min"] > 0
        assert entry["verdicts_match"] is True
        assert entry["jit_ms"] > 0
    assert set(report["speedup"]) == {"min", "median", "max"}


def test_run_refuses_kernel_only_options_on_the_userspace_backend(capsys) -> None:
    code = main(["run", "x.o", "--iface", "nope", "--backend", "userspace", "--swap",
                 "prog-array", "--run-stats"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--swap prog-array, --run-stats applies to the kernel backend only" in err
    assert main(["run", "x.o", "--iface", "nope", "--poller-cpu", "1"]) == 2
    assert "--poller-cpu applies to --backend userspace only" in capsys.readouterr().err
