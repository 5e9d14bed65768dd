"""Triton's extensions of the Open Inference Protocol: model configuration, statistics and the
model repository index, built from what is deployed and counted.

Every answer is a dict in Triton's JSON shape, which is the proto3 JSON form of Triton's gRPC
messages (`model_config.proto`, `grpc_service.proto`): the REST transport sends it as it is, the
gRPC one parses it into the message (`json_format.ParseDict`). The builders are Ray-free;
`OipRepository` gathers what they need (the model's replica, readiness, the summed counts).

Configuration. `max_batch_size` and `dynamic_batching` are the Model deployment's user_config
(`max_queue_delay_microseconds` from `batch_wait_timeout_s`; a preferred size only when the Model
waits for a full batch), `instance_group` its RUNNING replicas on their device kind. Tensors are
the model metadata's, less the first dimension that `max_batch_size` implies (Triton's rule);
where nothing is left, `dims: [1]` with `reshape: {shape: []}`, Triton's form of a tensor that is
only its batch dimension. An output's first dimension is its rows over all images (`counts`
splits them), not one per image: a client that batches must split by `counts`, as over `/v1`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deployments.errors import NotSupported, ServerError, UnknownModel
from deployments.flow.health import UNKNOWN, ModelState
from deployments.flow.tally import DURATIONS, Counts, ModelKey
from deployments.items import ModelInfo
from deployments.tasks import Task
from deployments.transports.oip_tensors import check_model, input_metadata, output_specs

if TYPE_CHECKING:
    from deployments.flow.repository import Repository
    from deployments.transports.base import Front

logger = logging.getLogger("ray.serve")

# OIP datatypes -> Triton's model-config data types.
DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
NOT_SUPPORTED = "model loading and unloading are not offered by this server"


def _tensor(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "data_type": DATA_TYPES[datatype]}
    rest = list(shape[1:])
    if rest:
        out["dims"] = rest
    else:
        out.update(dims=[1], reshape={"shape": []})
    return out


def model_config(
    name: str, task: Task, info: ModelInfo, replicas: int, versions: int = 1
) -> dict[str, Any]:
    """`GET /v2/models/{name}/config` (gRPC ModelConfig): Triton's `ModelConfig` as JSON, of the
    version `info` describes (one of `versions` served)."""
    batching: dict[str, Any] = {
        "max_queue_delay_microseconds": round(info.batch_wait_timeout_s * 1e6),
    }
    if info.batch_wait_timeout_s > 0:  # it waits up to that long for a full batch
        batching["preferred_batch_size"] = [info.max_batch_size]
    parameters = {
        "task": info.task,
        "weights": info.weights,
        "input_size": f"{info.input_width}x{info.input_height}",
        "resize": info.resize,
        "device": info.device,
    }
    return {
        "name": name,
        "platform": f"pytorch_{task.name}",
        "backend": "pytorch",
        # Triton's policy for what this server does: one version, or every one listed.
        "version_policy": {"all": {}} if versions > 1 else {"latest": {"num_versions": 1}},
        "max_batch_size": info.max_batch_size,
        "input": [_tensor(t["name"], t["datatype"], t["shape"]) for t in input_metadata()],
        "output": [_tensor(s.name, s.datatype, s.shape) for s in output_specs(task)],
        "dynamic_batching": batching,
        "instance_group": [
            {
                "name": name,
                "kind": "KIND_GPU" if info.device.startswith("cuda") else "KIND_CPU",
                "count": replicas,
            }
        ],
        "parameters": {k: {"string_value": str(v)} for k, v in parameters.items()},
    }


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_statistics(name: str, version: str, counts: Counts | None) -> dict[str, Any]:
    """One model's entry of `model_stats`: Triton's `ModelStatistics` as JSON."""
    counts = counts or Counts()
    inference = {d: _duration(*counts.duration(d)) for d in DURATIONS}
    inference.update(cache_hit=_duration(0, 0), cache_miss=_duration(0, 0))
    return {
        "name": name,
        "version": version,
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": inference,
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(0, 0),  # timed as part of the pass
                "compute_infer": _duration(passes, ns),
                "compute_output": _duration(0, 0),
            }
            for size, (passes, ns) in sorted(counts.batches.items())
        ],
        "memory_usage": [],
    }


def index_entry(name: str, version: str, state: ModelState) -> dict[str, Any]:
    """One model in the repository index: READY (it can infer, or is at zero and wakes on
    its first request), else UNAVAILABLE, with the reason."""
    entry: dict[str, Any] = {"name": name, "version": version}
    if state.ready:
        entry["state"] = "READY"
        if state.state != "ready":
            entry["reason"] = f"{state.state}: its first request waits for a replica to start"
        return entry
    entry["state"] = "UNAVAILABLE"
    entry["reason"] = {
        "warming": "warming: its first replica is loading",
        "unknown": "unknown: readiness not checked yet",
    }.get(state.state, f"{state.state}: no replica is running")
    return entry


class OipRepository:
    """What the REST and gRPC transports answer for the extensions, as Triton's JSON."""

    def __init__(
        self,
        front: Front,
        totals: Callable[[], Awaitable[Mapping[ModelKey, Counts]]],
        repository: Repository | None = None,
    ) -> None:
        self._front = front
        self._totals = totals  # every replica's counts summed, by served model and version
        self.repository = repository  # load and unload; None: not offered (501)

    async def _check(self, name: str, version: str | None) -> None:
        await self._front.find(name)
        check_model(name, version, self._front.versions)

    async def config(self, name: str, version: str | None) -> dict[str, Any]:
        """One model version's configuration (None or "": the latest)."""
        await self._check(name, version)
        # A version at zero starts a replica, as /v1 does.
        info = await self._front.describe(name, version or None)
        state = await self._front.model_state(name, version or None)
        task, served = self._front.tasks[name], len(self._front.versions[name])
        return model_config(name, task, info, max(state.replicas, 1), served)

    async def statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """`model_stats` for one model version, or every version of one model (`version`
        empty), or (`name` empty) of every served one: one entry per version, as Triton's."""
        versions = self._front.versions
        if name:
            await self._check(name, version)
            keys = [(name, v) for v in ([version] if version else versions[name])]
        else:
            keys = [(n, v) for n, vs in versions.items() for v in vs]
        try:
            totals = await self._totals()
        except Exception as exc:
            logger.warning("statistics not collected: %r", exc)
            raise ServerError(
                f"the statistics could not be collected now ({exc!r}); retry"
            ) from exc
        return {"model_stats": [model_statistics(n, v, totals.get((n, v))) for n, v in keys]}

    async def index(self, repository: str, ready_only: bool) -> list[dict[str, Any]]:
        """Every served model version with its state, one entry each (`ready_only`: the READY
        ones)."""
        if repository:
            raise UnknownModel(
                f"no model repository {repository[:100]!r}: this server has one; leave the "
                "repository name empty"
            )
        await self._front.readiness()  # a fresh check when none ran lately
        states = self._front.health.states()
        entries = [
            index_entry(n, v, states.get((n, v), UNKNOWN))
            for n, versions in self._front.versions.items()
            for v in versions
        ]
        if self.repository is not None and not ready_only:  # unloaded, loadable again
            parked = await asyncio.to_thread(self.repository.parked)
            served = {(e["name"], e["version"]) for e in entries}
            for config in parked.values():
                key = (config["args"]["name"], str(config["args"].get("version", "1")))
                if key not in served:
                    entries.append(
                        {
                            "name": key[0],
                            "version": key[1],
                            "state": "UNAVAILABLE",
                            "reason": "unloaded",
                        }
                    )
        return [e for e in entries if e["state"] == "READY"] if ready_only else entries

    def authorize_management(self, credential: str | None) -> None:
        """Load and unload need the management key (`Repository.authorize`)."""
        if self.repository is None:
            raise NotSupported(NOT_SUPPORTED)
        self.repository.authorize(credential)

    async def load(self, name: str, config: str | None) -> dict[str, Any]:
        """Triton's load: serve `name` (its parked applications, or `config`)."""
        assert self.repository is not None  # authorize_management ran first
        message = await self.repository.load(name, config, self._front.deadline(None))
        await self._front.health.check()  # its readiness now, not the latest check's
        return {"message": message}

    async def unload(self, name: str) -> dict[str, Any]:
        """Triton's unload: stop serving `name`; it stays in the index, UNAVAILABLE."""
        assert self.repository is not None
        message = await self.repository.unload(name, self._front.deadline(None))
        await self._front.health.check()
        return {"message": message}
