"""The mutation report: every mutant's outcome, written once the session ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPORT = Path(__file__).resolve().parents[2] / "build" / "tests" / "mutation-report.json"


@pytest.fixture(scope="session")
def mutation_report() -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    yield rows
    if not rows:
        return
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    accepted = [r for r in rows if not r.get("rejected")]
    caught = [r for r in accepted if r["caught"]]
    summary = {"mutants": len(accepted), "caught": len(caught),
               "catch_rate": round(len(caught) / len(accepted), 4) if accepted else None,
               "rejected_by_verifier": len(rows) - len(accepted), "rows": rows}
    REPORT.write_text(json.dumps(summary, indent=2))
    print(f"\nmutation suite: {len(caught)}/{len(accepted)} caught "
          f"({len(rows) - len(accepted)} refused by the verifier), report in {REPORT}")
    for r in rows:
        state = "refused" if r.get("rejected") else ("caught" if r["caught"] else "MISSED")
        print(f"  {r['target']:<10} {r['entry']:<9} {r['mutant']:<42} {state:<8} "
              f"packets {r.get('packets_to_catch')}")
