"""The AMC simulator as its own process, replaying a workload's planned run times.

    python -m benchmarks.simserver --plan plan.json --speed 120 --port 0

It prints one JSON line ``{"event": "simulator_started", "url": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from scheduler.amc.simulator import (
    AccountSpec,
    Simulator,
    SimulatorOptions,
    SimulatorServer,
)
from scheduler.logs import configure


def options(plan: dict[str, object], speed: float, seed: int) -> SimulatorOptions:
    accounts = {
        account["id"]: AccountSpec(
            marketplace_id=account["marketplace_id"],
            max_parallel=account["limit"],
            instances={i["id"]: i["limit"] for i in account["instances"]},
        )
        for account in plan["accounts"]  # type: ignore[union-attr]
    }
    return SimulatorOptions(
        speed=speed,
        seed=seed,
        accounts=accounts,
        planned_durations=plan["durations"],  # type: ignore[arg-type]
        pending_share=0.02,
        failure_rate=0.0,
        privacy_repeats=10**6,
        page_size=100,
        token_lifetime=3600.0,
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--speed", type=float, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure(level="warning", fmt="json")
    plan = json.loads(args.plan.read_text())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    simulator = Simulator(options(plan, args.speed, args.seed))
    async with SimulatorServer(simulator, "127.0.0.1", args.port) as server:
        print(json.dumps({"event": "simulator_started", "url": server.url}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
