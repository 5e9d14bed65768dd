"""`make chaos`'s bookkeeping (scripts/chaos.py), without Ray: how each image's answer is judged,
the kill schedule, the request mix and the summary's bar."""

from __future__ import annotations

import io
import itertools
import random
from typing import Any

import pytest
from PIL import Image

from scripts.chaos import (
    STAGES,
    Planned,
    Planner,
    Record,
    Verdict,
    bad_image,
    chaos_config,
    deployed_config,
    judge,
    judge_client_lines,
    per_fault,
    plan_kills,
    summarise,
)
from tools.echo import labels_for

RED: tuple[int, int, int] = (200, 10, 30)
BLUE: tuple[int, int, int] = (5, 6, 250)


def _answer(colour: tuple[int, int, int], version: str = "1") -> dict[str, Any]:
    predictions = [{"label": label, "score": 1.0} for label in labels_for(colour)]
    return {"predictions": predictions, "model_version": version}


def _error(status: int, code: str) -> dict[str, Any]:
    return {"item_id": "x", "error": {"code": code, "message": "m", "status": status}}


def _verdicts(out: list[Verdict]) -> list[str]:
    return [v.verdict for v in out]


def test_single_image_verdicts() -> None:
    single = Planned("single", (RED,), ("",))
    assert _verdicts(judge(single, 200, _answer(RED))) == ["ok"]
    assert _verdicts(judge(single, 200, _answer(BLUE))) == ["misjoined"]
    assert _verdicts(judge(single, 200, {"predictions": []})) == ["missing"]
    assert _verdicts(judge(single, 503, {"error": {"code": "overloaded"}})) == ["clear"]
    assert _verdicts(judge(single, 504, {"error": {"code": "deadline_exceeded"}})) == ["clear"]
    # Serve's proxy answering for a dead Ingress: an answer, but not a clear one.
    assert _verdicts(judge(single, 500, "Internal Server Error")) == ["unexpected"]
    assert _verdicts(judge(single, 422, {"error": {"code": "poison_image"}})) == ["unexpected"]
    # The proxy's own 408 is a clear answer only for a request that asked for a deadline.
    assert _verdicts(judge(single, 408, "Request Timeout")) == ["unexpected"]
    short = Planned("single", (RED,), ("",), deadline_s=0.1)
    assert _verdicts(judge(short, 408, "Request Timeout")) == ["clear"]
    lost = judge(single, None, None, "ReadError")
    assert lost == [Verdict("lost", None, "ReadError")]


def test_bad_images_want_a_clear_4xx() -> None:
    bad = Planned("single", (None,), ("truncated_jpeg",))
    assert _verdicts(judge(bad, 422, {"error": {"code": "corrupt_image"}})) == ["ok"]
    assert _verdicts(judge(bad, 415, {"error": {"code": "unsupported_format"}})) == ["ok"]
    assert _verdicts(judge(bad, 503, {"error": {"code": "overloaded"}})) == ["clear"]
    assert _verdicts(judge(bad, 200, _answer(RED))) == ["unexpected"]


def test_multipart_entries_are_judged_in_order() -> None:
    planned = Planned("multipart", (RED, None, BLUE), ("", "garbage", ""))
    body = {"results": [_answer(RED), _error(415, "unsupported_format"), _error(503, "overloaded")]}
    assert _verdicts(judge(planned, 200, body)) == ["ok", "ok", "clear"]
    swapped = {"results": [_answer(BLUE), _error(415, "unsupported_format"), _answer(RED)]}
    assert _verdicts(judge(planned, 200, swapped)) == ["misjoined", "ok", "misjoined"]
    short = {"results": [_answer(RED)]}
    assert _verdicts(judge(planned, 200, short)) == ["ok", "missing", "missing"]
    extra = {"results": [_answer(RED), _error(415, "x"), _answer(BLUE), _answer(RED)]}
    assert _verdicts(judge(planned, 200, extra)) == ["ok", "ok", "ok", "misjoined"]
    assert _verdicts(judge(planned, 504, {"error": {"code": "deadline_exceeded"}})) == [
        "clear",
        "clear",
        "clear",
    ]
    assert _verdicts(judge(planned, None, None, "ConnectError")) == ["lost"] * 3


def test_a_200_that_names_two_model_versions_is_mixed() -> None:
    planned = Planned("multipart", (RED, None, BLUE), ("", "garbage", ""))
    one = {"results": [_answer(RED, "2"), _error(415, "x"), _answer(BLUE, "2")]}
    assert _verdicts(judge(planned, 200, one)) == ["ok", "ok", "ok"]
    assert judge(planned, 200, one)[0].version == "2"
    two = {"results": [_answer(RED, "1"), _error(415, "x"), _answer(BLUE, "2")]}
    assert _verdicts(judge(planned, 200, two)) == ["mixed", "ok", "mixed"]
    summary = summarise([Record(planned, 0, 1, 200, judge(planned, 200, two))], [], [])
    assert summary["mixed_versions"] == 2 and not summary["passed"]


def test_kill_plan_is_seeded_bounded_and_visits_every_stage() -> None:
    plan = plan_kills(9, 180.0)
    assert plan == plan_kills(9, 180.0)
    times = [t for t, _ in plan]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(10.0 <= g <= 20.0 for g in gaps), gaps
    assert times[-1] < 170.0
    assert {stage for _, stage in plan} == set(STAGES)
    first_round = [stage for _, stage in plan[: len(STAGES)]]
    assert sorted(first_round) == sorted(STAGES)


def test_planner_mixes_requests_and_never_reuses_a_colour() -> None:
    planner = Planner(3)
    plans = [planner.next() for _ in range(2000)]
    colours = [c for p in plans for c in p.colours if c is not None]
    assert len(colours) == len(set(colours))
    multipart = [p for p in plans if p.kind == "multipart"]
    assert multipart and all(2 <= len(p.colours) <= 8 for p in multipart)
    assert any(p.deadline_s is not None for p in plans)
    assert any(b for p in plans for b in p.bad)
    assert all((c is None) == bool(b) for p in plans for c, b in zip(p.colours, p.bad, strict=True))


@pytest.mark.parametrize("kind", ["truncated_jpeg", "garbage"])
def test_bad_images_do_not_decode(kind: str) -> None:
    data = bad_image(kind, random.Random(0))
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


def test_summary_counts_and_the_bar() -> None:
    single = Planned("single", (RED,), ("",))
    kills = [{"t": 5.0, "stage": "Ingress", "pid": 1}, {"t": 20.0, "stage": "Model", "pid": 2}]
    records = [
        Record(single, 0.0, 1.0, 200, judge(single, 200, _answer(RED))),
        Record(single, 4.0, 6.0, None, judge(single, None, None, "ReadError")),
        Record(single, 19.0, 21.0, 503, judge(single, 503, {"error": {"code": "overloaded"}})),
        Record(single, 4.5, 5.5, 500, judge(single, 500, "Internal Server Error")),
    ]
    summary = summarise(records, kills, [])
    assert summary["requests"] == 4
    assert summary["statuses"] == {"200": 1, "500": 1, "503": 1, "no answer": 1}
    assert summary["lost"] == 1 and summary["lost_by_cause"] == {"Ingress kill in flight": 1}
    assert summary["unexpected_by_cause"] == {"500 proxy, Ingress kill in flight": 1}
    assert summary["kills_by_stage"] == {
        "Ingress": 1,
        "Preprocessor": 0,
        "Model": 1,
        "Postprocessor": 0,
    }
    assert summary["misjoined"] == 0 and not summary["passed"]
    assert summarise(records[:1] + records[2:], kills, [])["passed"]


def test_client_lines_are_judged_against_each_files_colour() -> None:
    colours = {"0.png": (1, 2, 3), "1.png": (4, 5, 6), "2.png": (7, 8, 9)}

    def line(name: str, colour: tuple[int, int, int], attempts: int = 1) -> dict[str, Any]:
        labels = [{"label": f"{c}{v:03d}"} for c, v in zip("rgb", colour, strict=True)]
        body = {"predictions": labels}
        return {"path": f"x/{name}", "status": 200, "body": body, "attempts": attempts}

    lines = [line("0.png", (1, 2, 3), attempts=2), line("1.png", (7, 8, 9))]
    summary = judge_client_lines(lines, colours)
    assert (summary["ok"], summary["misjoined"], summary["not_answered"]) == (1, 1, 1)
    assert summary["attempts"] == {"1": 1, "2": 1} and summary["resent_images"] == 1


def test_rolling_deploys_change_one_thing_each() -> None:
    from tools.serve_process import load_config

    base = chaos_config(load_config(), 8200)
    hot = deployed_config(base, "deploy user_config")
    args = deployed_config(hot, "deploy args")

    def model(config: dict[str, Any]) -> dict[str, Any]:
        (found,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "Model"]
        return found

    assert model(hot)["user_config"]["max_batch_size"] != model(base)["user_config"].get(
        "max_batch_size", 8
    )
    assert hot["applications"][0]["args"] == base["applications"][0]["args"]
    changed = {
        k
        for k, v in args["applications"][0]["args"].items()
        if v != hot["applications"][0]["args"][k]
    }
    assert changed == {"request_timeout_s"}
    assert model(args) == model(hot)


def test_new_weights_are_a_checkpoint_the_model_loads_under_the_next_version(
    tmp_path: Any,
) -> None:
    from deployments.runtime.model_source import load, resolve
    from deployments.runtime.spec import ModelSpec
    from tools.serve_process import load_config

    base = chaos_config(load_config(), 8200)
    new = deployed_config(base, "deploy weights", tmp_path)
    (before,) = base["applications"][0]["args"]["models"]
    (after,) = new["applications"][0]["args"]["models"]
    assert (before.get("version", "1"), after["version"]) == ("1", "2")
    spec = ModelSpec.model_validate(after["model"])
    module = load(spec, resolve(spec))
    assert float(module.generation) == 2.0  # the new weights, read back by the service's loader
    again = deployed_config(new, "deploy weights", tmp_path)
    assert again["applications"][0]["args"]["models"][0]["version"] == "3"


def test_each_fault_counts_what_was_in_flight_until_it_recovered() -> None:
    planned = Planned("single", (RED,), ("",))
    records = [
        Record(planned, 1.0, 3.0, None, [Verdict("lost", None, "ReadError")]),
        Record(planned, 5.0, 6.0, 200, [Verdict("misjoined", 200, "ok")]),
        Record(planned, 20.0, 21.0, 200, [Verdict("ok", 200, "ok")]),
    ]
    faults = [
        {"t": 2.0, "stage": "Ingress", "recovered_after_s": 4.0},
        {"t": 19.0, "stage": "deploy args", "recovered_after_s": None},
    ]
    first, second = per_fault(records, faults)
    assert (first["lost"], first["misjoined"], first["images_in_flight"]) == (1, 1, 2)
    assert (second["lost"], second["misjoined"], second["images_in_flight"]) == (0, 0, 0)
