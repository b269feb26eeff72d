"""Runs the Autobahn|Testsuite cases (through kosoku) against a WebSocket echo endpoint and
prints one JSON object: each case's verdicts.

    python3 run.py ws://127.0.0.1:PORT/echo [--parallelism N] [--include CASE]... [--exclude CASE]...

permessage-deflate (12.*, 13.*) is excluded by default: ringcast does not negotiate it."""

import argparse
import asyncio
import json
import sys

import kosoku


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--parallelism", type=int, default=4)
    p.add_argument("--include", action="append")
    p.add_argument("--exclude", action="append", default=["12.*", "13.*"])
    args = p.parse_args()
    try:
        results = await kosoku.run_fuzzingclient(
            args.url, args.include, args.exclude, concurrency=args.parallelism
        )
    except kosoku.FailureError as failure:
        results = failure.results
    out = {
        r.case_id: {
            "behavior": r.behavior.value,
            "behavior_close": r.behavior_close.value,
            "remote_close_code": r.remote_close_code,
            "result": r.result,
            "result_close": r.result_close,
            "duration_ms": r.duration,
        }
        for r in results
    }
    json.dump(out, sys.stdout)


asyncio.run(main())
