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
    # A placement shown equivalent from its bytecode is no mutant: not counted.
    accepted = [r for r in rows if not r.get("rejected") and not r.get("equivalent")]
    caught = [r for r in accepted if r["caught"]]
    mutants: dict[tuple[str, str, str], bool] = {}
    for r in accepted:
        key = (r["target"], r["entry"], r["mutant"])
        mutants[key] = mutants.get(key, True) and r["caught"]
    summary = {"mutants": len(mutants), "caught": sum(mutants.values()),
               "catch_rate": round(sum(mutants.values()) / len(mutants), 4) if mutants
               else None,
               "placements": len(accepted), "placements_caught": len(caught),
               "equivalent_placements": sum(1 for r in rows if r.get("equivalent")),
               "rejected_by_verifier": sum(1 for r in rows if r.get("rejected")),
               "rows": rows}
    REPORT.write_text(json.dumps(summary, indent=2))
    print(f"\nmutation suite: {summary['caught']}/{len(mutants)} mutants caught at every "
          f"placement ({len(caught)}/{len(accepted)} placements, "
          f"{summary['equivalent_placements']} shown equivalent, "
          f"{summary['rejected_by_verifier']} refused by the verifier), report in {REPORT}")
    for r in rows:
        state = "refused" if r.get("rejected") else "equiv" if r.get("equivalent") else \
            "caught" if r["caught"] else "known" if r.get("known_miss") else "MISSED"
        where = f"@{r['placement']}:{r.get('site')}" if "placement" in r else ""
        print(f"  {r['target']:<10} {r['entry']:<9} {r['mutant'] + where:<58} {state:<8} "
              f"packets {r.get('packets_to_catch')}")
