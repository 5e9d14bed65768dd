"""`make soak`: mixed traffic for ten minutes with periodic faults, and each process's memory at
the start and at the end.

    .venv/bin/python -m scripts.soak [--minutes 10] [--fault-every 60] [--seed 5] [--port 8210]

Starts `serve run` as `make chaos` does (serve_config.yaml with the echo model, two replicas per
stage, 127.0.0.1 only) and sends `make chaos`'s mixed load: single images, multipart requests of
2-8 images, bad images and short deadlines, every good image a colour of its own. After a warm-up
(`--warm-up`, 60 s, of the same load) it reads the resident memory (VmRSS) of every process of
the session. Then, for `--minutes`, the load goes on while one replica is SIGKILLed every
`--fault-every` seconds, cycling through Ingress, Preprocessor, Model and Postprocessor. In each
stage one replica, its witness, is never killed, so every stage has a process measured from the
end of the warm-up to the end of the run; replacements are listed with the memory they ended at.

The bar: 0 lost and 0 misjoined images (judged as `make chaos` judges them), 16 of 16 fresh
images right once the faults stop, and no witness replica more than 10 % (`--max-growth`) above
its memory after the warm-up. The exit status is 1 when it is missed. A JSON summary goes to
artifacts/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path

from scripts.chaos import (
    STAGES,
    Planner,
    Run,
    after_check,
    per_fault,
    report_lines,
    stage_pids,
    start_serve,
    summarise,
    wait_recovered,
)

ROOT = Path(__file__).resolve().parent.parent

# --- pure helpers (unit-tested without Ray) -----------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """A process's resident memory in KiB (VmRSS), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def fault_plan(seconds: float, every_s: float) -> list[tuple[float, str]]:
    """(time, stage) for each kill: every `every_s` from half of it on, cycling the stages."""
    plan = []
    at = every_s / 2
    while at < seconds:
        plan.append((at, STAGES[len(plan) % len(STAGES)]))
        at += every_s
    return plan


def witnesses(pids: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The replica of each stage that is never killed: its oldest (lowest) pid."""
    return {stage: min(found) for stage, found in pids.items() if found}


@dataclass(frozen=True)
class Memory:
    pid: int
    role: str
    start_kib: int | None  # after the warm-up; None for a process started since
    end_kib: int | None  # at the end; None if it is gone
    witness: bool  # a stage's replica the run never kills: the bar applies to it
    killed: bool = False  # SIGKILLed by the run

    @property
    def growth(self) -> float | None:
        if not self.start_kib or self.end_kib is None:
            return None
        return self.end_kib / self.start_kib - 1.0


def memory_rows(
    start: Mapping[int, tuple[str, int]],
    end: Mapping[int, tuple[str, int]],
    witness_pids: AbstractSet[int],
    killed_pids: AbstractSet[int] = frozenset(),
) -> list[Memory]:
    """One row per process seen at the start or the end, by role then pid."""
    rows = []
    for pid in sorted(set(start) | set(end)):
        role = (start.get(pid) or end[pid])[0]
        rows.append(
            Memory(
                pid=pid,
                role=role,
                start_kib=start[pid][1] if pid in start else None,
                end_kib=end[pid][1] if pid in end else None,
                witness=pid in witness_pids,
                killed=pid in killed_pids,
            )
        )
    return sorted(rows, key=lambda m: (m.role, m.pid))


def memory_passed(rows: Sequence[Memory], max_growth: float) -> bool:
    """Every witness is alive at the end and grew at most `max_growth`."""
    held = [m for m in rows if m.witness]
    return bool(held) and all(m.growth is not None and m.growth <= max_growth for m in held)


def memory_lines(rows: Sequence[Memory], max_growth: float) -> list[str]:
    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.0f} MiB"

    lines = [f"{'process':<22}{'pid':>8}{'after warm-up':>15}{'end':>10}{'growth':>9}"]
    for m in rows:
        growth = "" if m.growth is None else f"{m.growth * 100:+.1f} %"
        mark = ""
        if m.witness:
            ok = m.growth is not None and m.growth <= max_growth
            mark = "  witness" + ("" if ok else f"  MISS (> {max_growth * 100:.0f} %)")
        elif m.start_kib is None:
            mark = "  started during the run"
        elif m.end_kib is None:
            mark = "  killed" if m.killed else "  gone"
        lines.append(
            f"{m.role:<22}{m.pid:>8}{mib(m.start_kib):>15}{mib(m.end_kib):>10}{growth:>9}{mark}"
        )
    return lines


# --- the run (starts Ray) -----------------------------------------------------------------------


def snapshot(sid: int) -> dict[int, tuple[str, int]]:
    """Role and resident memory of every live process of the session."""
    from tools.serve_process import process_role, session_pids

    found = {}
    for pid in session_pids(sid):
        kib = rss_kib(pid)
        role = process_role(pid)
        if kib is not None and role != "gone":
            found[pid] = (role, kib)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (10)")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds of load first (60)")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds per kill (60)")
    parser.add_argument("--max-growth", type=float, default=0.10, help="witness bar (0.10)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--port", type=int, default=8210, help="HTTP port on 127.0.0.1 (8210)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--json", type=Path, default=ROOT / "artifacts" / "soak.json")
    args = parser.parse_args(argv)

    began = time.monotonic()
    serve, sid = start_serve("soak", args.port)
    planner = Planner(args.seed)
    seconds = args.minutes * 60.0
    try:
        # One run, one clock: the warm-up's requests and the soak's are judged alike.
        run = Run(serve.url, args.seed, args.warm_up, args.concurrency, 60.0, sid, serve)
        print(f"warm-up: {args.warm_up:.0f} s of load", flush=True)
        run.t0 = time.monotonic()
        asyncio.run(run.load(planner))
        warm_up_requests = len(run.records)
        start = snapshot(sid)
        spared = witnesses(stage_pids(sid))
        run.spared = set(spared.values())
        print(f"memory read; witnesses {spared}", flush=True)
        run.seconds = args.warm_up + seconds
        plan = [(args.warm_up + at, stage) for at, stage in fault_plan(seconds, args.fault_every)]
        print(f"soak: {args.minutes:g} min, {args.concurrency} in flight, {len(plan)} kills")

        async def soak() -> None:
            await asyncio.gather(run.load(planner), run.killer(plan))

        asyncio.run(soak())
        recovered = wait_recovered(serve, sid, serve.url)
        after_ok = asyncio.run(after_check(serve.url, Planner(args.seed + 7)))
        end = snapshot(sid)
    finally:
        serve.stop()

    summary = summarise(run.records, run.kills, run.skipped)
    rows = memory_rows(start, end, set(spared.values()), {k["pid"] for k in run.kills})
    memory_ok = memory_passed(rows, args.max_growth)
    summary.update(
        {
            "minutes": args.minutes,
            "warm_up_s": args.warm_up,
            "fault_every_s": args.fault_every,
            "seed": args.seed,
            "concurrency": args.concurrency,
            "warm_up_requests": warm_up_requests,
            "per_fault": per_fault(run.records, run.kills),
            "wall_s": round(time.monotonic() - began, 1),
            "recovered_after_s": None if recovered is None else round(recovered, 1),
            "after_check_ok": f"{after_ok}/16",
            "max_growth": args.max_growth,
            "memory": [{**asdict(m), "growth": m.growth} for m in rows],
            "memory_passed": memory_ok,
        }
    )
    summary["passed"] = summary["passed"] and memory_ok and recovered is not None and after_ok == 16
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    lines = report_lines(summary)
    print("\n".join(lines[:-1]))  # the last line is chaos's own verdict; the soak's follows
    print("\n".join(memory_lines(rows, args.max_growth)))
    rec = "no" if recovered is None else f"{recovered:.0f} s"
    print(f"recovered to 2 replicas per stage after the load: {rec}; after-check {after_ok}/16")
    print(
        "PASS: 0 lost, 0 misjoined, witnesses within "
        f"{args.max_growth * 100:.0f} % of their memory after the warm-up"
        if summary["passed"]
        else "MISS: the bar is 0 lost, 0 misjoined, 16/16 after, witnesses within "
        f"{args.max_growth * 100:.0f} %"
    )
    print(f"wall {summary['wall_s']:.0f} s; summary in {args.json}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
