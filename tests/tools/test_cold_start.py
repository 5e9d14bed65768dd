"""bench/cold_start.py's pure parts: the config it serves, the log split, the summary and table."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.cold_start import (
    LOOK_BACK_S,
    PHASES,
    cold_phases,
    cold_start_config,
    deployment_of,
    parse_log,
    summarise_rounds,
    table,
)
from bench.service import BenchError
from tools.serve_process import load_config, named_item

DEPLOYMENT = "Model-shapes-segmenter"


def _at(seconds: float) -> str:
    """A Serve log timestamp `seconds` after 21:00:00 on a fixed day."""
    t = dt.datetime(2026, 11, 25, 21, 0, 0) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"


def _epoch(seconds: float) -> float:
    return (dt.datetime(2026, 11, 25, 21, 0, 0) + dt.timedelta(seconds=seconds)).timestamp()


def test_config_changes_only_the_models_scale_down_and_the_port() -> None:
    base = load_config()
    config = cold_start_config(base, 8301, "shapes-segmenter", 2.0, {"proxy_location": "HeadOnly"})
    app = named_item(config["applications"], "vision")
    seg = named_item(app["deployments"], DEPLOYMENT)["autoscaling_config"]
    shipped = named_item(named_item(base["applications"], "vision")["deployments"], DEPLOYMENT)
    assert seg == {
        **shipped["autoscaling_config"],
        "downscale_delay_s": 2.0,
        "look_back_period_s": LOOK_BACK_S,
    }
    assert LOOK_BACK_S > 10  # longer than Serve's metrics push
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] == 8301
    assert config["proxy_location"] == "HeadOnly"
    # Everything else is the shipped config, which is left as it was.
    for d in app["deployments"]:
        if d["name"] != DEPLOYMENT:
            assert d == named_item(
                named_item(base["applications"], "vision")["deployments"], d["name"]
            )
    assert shipped["autoscaling_config"]["downscale_delay_s"] == 300


def test_config_refuses_a_model_that_does_not_scale_to_zero_or_is_not_served() -> None:
    base = load_config()
    with pytest.raises(BenchError, match="Model does not scale to zero"):
        cold_start_config(base, 8301, "shapes-detector")
    with pytest.raises(BenchError, match="'nope' is not served"):
        cold_start_config(base, 8301, "nope")
    app = named_item(base["applications"], "vision")
    assert deployment_of(app, "shapes-detector") == "Model"
    assert deployment_of(app, "shapes-segmenter") == DEPLOYMENT


def test_parse_log_reads_serve_lines_and_skips_the_rest() -> None:
    events = parse_log(
        [
            f"INFO {_at(1.5)} controller 4593 -- Adding 1 replica to Deployment(name='M').\n",
            "Traceback (most recent call last):",
            f"WARNING {_at(2.25)} vision_M abc -- a -- b",
        ]
    )
    assert [e.message for e in events] == ["Adding 1 replica to Deployment(name='M').", "a -- b"]
    assert [e.at for e in events] == pytest.approx([_epoch(1.5), _epoch(2.25)])


def _logs(offset: float = 0.0) -> tuple[list[str], list[str]]:
    tag = f"Deployment(name='{DEPLOYMENT}', app='vision')"
    controller = [
        # An earlier start of the same deployment, before this request: ignored.
        f"INFO {_at(-50)} controller 1 -- Upscaling {tag} from 0 to 1 replicas. x",
        f"INFO {_at(offset + 0.1)} controller 1 -- Upscaling Deployment(name='Model', "
        "app='vision') from 0 to 1 replicas.",
        f"INFO {_at(offset + 0.2)} controller 1 -- Upscaling {tag} from 0 to 1 replicas. "
        "Current ongoing requests: 1.00, current running replicas: 0.",
        f"INFO {_at(offset + 0.25)} controller 1 -- Adding 1 replica to {tag}.",
        f"INFO {_at(offset + 6.0)} controller 1 -- Replica(id='r2', deployment='{DEPLOYMENT}', "
        "app='vision') started successfully on node 'n' after 5.8s (PID: 9). x",
    ]
    replica = [
        f"INFO {_at(offset + 3.0)} vision_{DEPLOYMENT} r2 -- Started initializing replica.",
        f"INFO {_at(offset + 5.0)} vision_{DEPLOYMENT} r2 -- model shapes.segmenter:build "
        "(segmentation, weights w.pt) ready on cpu in 1.8 s; torch threads 2",
        f"INFO {_at(offset + 5.5)} vision_{DEPLOYMENT} r2 -- Finished initializing replica.",
    ]
    return controller, replica


def test_cold_phases_split_at_the_logged_events_and_add_up() -> None:
    controller, replica = _logs()
    sent, done = _epoch(0.0), _epoch(6.4)
    split = cold_phases(sent, done, DEPLOYMENT, parse_log(controller), parse_log(replica))
    assert split["phases_s"] == {
        "decide": pytest.approx(0.2),
        "process": pytest.approx(2.8),
        "init": pytest.approx(2.5),
        "running": pytest.approx(0.5),
        "serve": pytest.approx(0.4),
    }
    assert list(split["phases_s"]) == [name for name, _ in PHASES]
    assert sum(split["phases_s"].values()) == pytest.approx(done - sent)
    assert split["model_ready_s"] == 1.8 and split["device"] == "cpu"


def test_cold_phases_with_missing_events_still_add_up() -> None:
    controller, replica = _logs()
    sent, done = _epoch(0.0), _epoch(6.4)
    # No replica log (another Ray's folder, say): the process phase runs on to RUNNING.
    split = cold_phases(sent, done, DEPLOYMENT, parse_log(controller), [])
    assert split["phases_s"]["process"] is None and split["phases_s"]["init"] is None
    assert split["phases_s"]["running"] == pytest.approx(5.8)
    assert "model_ready_s" not in split
    # Events after the answer belong to something else.
    split = cold_phases(sent, _epoch(2.0), DEPLOYMENT, parse_log(controller), parse_log(replica))
    assert split["phases_s"]["serve"] == pytest.approx(1.8)
    assert sum(v for v in split["phases_s"].values() if v is not None) == pytest.approx(2.0)


def _round(n: int, cold: float, warm: list[float]) -> dict[str, object]:
    phases = dict.fromkeys((name for name, _ in PHASES), 0.1)
    phases["init"] = cold / 2000
    return {
        "round": n,
        "cold_ms": cold,
        "warm_ms": warm,
        "reference_ms": [w / 2 for w in warm],
        "phases_s": phases,
        "model_ready_s": 1.5,
        "other_cores": 0.05,
    }


def test_summary_and_table() -> None:
    rounds = [_round(1, 4000, [50, 60]), _round(2, 6000, [40, 70]), _round(3, 5000, [55])]
    s = summarise_rounds(rounds)
    assert s["cold_ms"] == {"n": 3, "p50": 5000, "mean": 5000, "min": 4000, "max": 6000}
    assert s["warm_ms"]["p50"] == 55 and s["warm_ms"]["n"] == 5
    assert s["reference_ms"]["p50"] == 27.5
    assert s["cold_penalty_ms"] == 5000 - 55
    assert s["phases_s_p50"]["init"] == pytest.approx(2.5)
    assert s["model_ready_s_p50"] == 1.5
    text = table({"rounds": rounds, "summary": s})
    lines = text.splitlines()
    assert lines[0].startswith("| round | cold ms |")
    assert len({line.count("|") for line in lines[:6]}) == 1  # every row has every column
    assert lines[2] == "| 1 | 4000 | 100 | 100 | 2000 (1500) | 100 | 100 | 55.0 | 27.5 | 0.05 |"
    assert lines[5].startswith("| **median** | 5000 | 100 | 100 | 2500 (1500) |")
    # A round whose logs could not be read shows dashes, not zeros.
    rounds[0]["phases_s"] = dict.fromkeys((name for name, _ in PHASES), None)
    assert "| 1 | 4000 | – | – | – (1500) |" in table({"rounds": rounds, "summary": s})
