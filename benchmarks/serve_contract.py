"""The contract test of ``vaekit serve`` at length: schemathesis, every check, many examples, three models.

    python benchmarks/serve_contract.py [--max-examples 300] [--seed 0] [--json out.json]

The three servers of tests/test_serve_contract.py (an image model with examples and a stored nll threshold, a
standardized table, a conditional two-layer hierarchy; small and untrained, built in-process), each driven by
schemathesis's engine, the one ``schemathesis run --checks all`` drives: its examples, coverage and fuzzing
phases, positive and negative data, every check. It prints, per model, the test cases sent, the answers by
status, the checks run and each failure with the request that reproduces it; the exit status is 1 if any
check failed or any answer was a 5xx.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the models and PNG strategies of the contract test

import test_serve_contract as contract  # noqa: E402
from schemathesis.engine import Status, events, from_schema  # noqa: E402

SERVICES = {"image": contract.image_service, "table": contract.table_service,
            "conditional": contract.conditional_service}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-examples", type=int, default=300, help="examples per operation and phase")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (the run is reproducible for a seed)")
    p.add_argument("--models", nargs="+", choices=list(SERVICES), default=list(SERVICES))
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def run(name: str, max_examples: int, seed: int) -> dict:
    """Schemathesis's engine on one model's server: cases, answers, checks and failures."""
    schema = contract.contract(SERVICES[name](), max_examples=max_examples, seed=seed)
    cases, statuses, checks, failures, errors = 0, collections.Counter(), collections.Counter(), [], []
    answered_200: set[str] = set()
    t0 = time.perf_counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.interactions)
            codes = [i.response.status_code if i.response else "none" for i in recorder.interactions.values()]
            statuses.update(codes)
            if 200 in codes:
                answered_200.add(recorder.label)
            for nodes in recorder.checks.values():
                for node in nodes:
                    checks[node.name] += 1
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        failures.append({"operation": recorder.label, "check": node.name, "title": failure.title,
                                         "message": failure.message, "reproduce": node.failure_info.code_sample})
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.message}")
    operations = [op.ok().label for op in schema.get_all_operations()]
    return {"model": name, "seconds": time.perf_counter() - t0, "cases": cases,
            "operations": len(operations), "never_200": sorted(set(operations) - answered_200),
            "statuses": dict(sorted(statuses.items(), key=str)), "checks": dict(sorted(checks.items())),
            "failures": failures, "errors": errors,
            "status_5xx": sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)}


def report(r: dict) -> None:
    print(f"{r['model']}: {r['operations']} operations, {r['cases']} test cases in {r['seconds']:.0f} s, "
          f"{len(r['failures'])} failures, {len(r['errors'])} errors, {r['status_5xx']} answers 5xx; "
          f"operations never answered 200: {r['never_200'] or 'none'}")
    print("  answers: " + ", ".join(f"{s}: {n}" for s, n in r["statuses"].items()))
    print(f"  checks ({len(r['checks'])}): " + ", ".join(f"{c} {n}" for c, n in r["checks"].items()))
    for f in r["failures"]:
        print(f"  FAILED {f['operation']} [{f['check']}] {f['title']}\n    {f['message']}\n    {f['reproduce'][:2000]}")
    for e in r["errors"]:
        print(f"  ERROR {e}")


def main() -> int:
    args = parse_args()
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # malformed parts are the point here
    results = []
    for name in args.models:
        results.append(run(name, args.max_examples, args.seed))
        report(results[-1])
    total = {k: sum(r[k] if isinstance(r[k], int) else len(r[k]) for r in results)
             for k in ("cases", "failures", "errors", "status_5xx")}
    print(f"all: {total['cases']} test cases, {total['failures']} failures, {total['errors']} errors, "
          f"{total['status_5xx']} answers 5xx (--max-examples {args.max_examples}, --seed {args.seed})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "total": total,
                                         "models": results}, indent=2))
    return 0 if total["failures"] == total["errors"] == total["status_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
