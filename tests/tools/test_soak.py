"""`make soak`'s bookkeeping, without Ray: the fault plan, the witnesses and the memory bar."""

from __future__ import annotations

import os

from scripts.chaos import STAGES
from scripts.soak import (
    Memory,
    fault_plan,
    memory_lines,
    memory_passed,
    memory_rows,
    rss_kib,
    witnesses,
)


def test_faults_cycle_every_stage_at_the_given_period() -> None:
    plan = fault_plan(600, 60)
    assert [at for at, _ in plan] == [30 + 60 * i for i in range(10)]
    assert [stage for _, stage in plan[:4]] == list(STAGES)
    assert {stage for _, stage in plan} == set(STAGES)


def test_each_stage_keeps_its_oldest_replica_as_witness() -> None:
    assert witnesses({"Ingress": [40, 12], "Model": [7], "Preprocessor": []}) == {
        "Ingress": 12,
        "Model": 7,
    }


def test_the_bar_holds_witnesses_only_and_a_dead_witness_misses_it() -> None:
    start = {1: ("Model", 1000), 2: ("Model", 1000), 3: ("controller", 500)}
    end = {1: ("Model", 1090), 3: ("controller", 900), 4: ("Model", 3000)}
    rows = memory_rows(start, end, {1}, {2})
    by_pid = {m.pid: m for m in rows}
    assert by_pid[1].growth is not None and abs(by_pid[1].growth - 0.09) < 1e-9
    assert by_pid[2].end_kib is None and by_pid[4].start_kib is None
    # A killed replica, a replacement and a non-replica process do not count.
    assert memory_passed(rows, 0.10)
    assert not memory_passed(rows, 0.05)
    assert not memory_passed(memory_rows(start, {3: ("controller", 500)}, {1}), 0.10)
    assert not memory_passed([], 0.10)
    text = "\n".join(memory_lines(rows, 0.05))
    assert "MISS" in text and "started during the run" in text and "killed" in text


def test_rss_of_this_process_and_of_none() -> None:
    mine = rss_kib(os.getpid())
    assert mine is not None and mine > 1024
    assert rss_kib(2**22 + 1) is None
    assert Memory(1, "Model", None, 5, True).growth is None
