"""`echo`: a tiny model whose answer names the image, for fault tests and `make chaos`.

Loaded by the service through `model.name: tools.echo_model:echo`. Its labels are
`tools.echo` (the image's mean colour, one class per channel level). Options add a simulated
compute cost, an out-of-memory failure above a batch size, a gate that holds a batch inside the
forward pass until a test opens it, or a crash (the replica's process exits) when an image of one
mean colour enters a forward pass. With `control`, it reads them all from a detached actor of
that name at every forward pass instead.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray
import torch
from ray import serve
from torch import nn

from tools.echo import CATEGORIES, CHANNELS, LEVELS

GATE_NAMESPACE = "serve"  # where the gate and control actors `echo` looks up live


class Echo(nn.Module):
    task = "classification"
    categories = CATEGORIES
    input_size = 32
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(
        self,
        delay_s: float = 0.0,
        oom_above: int | None = None,
        gate: str | None = None,
        crash_on: list[int] | None = None,
        crash_log: str | None = None,
        control: str | None = None,
    ) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.oom_above = oom_above
        self.gate = gate
        self.crash_on = crash_on
        self.crash_log = crash_log
        self.control = control
        self._control: Any = None
        # Its one weight, which the answers never read: `make chaos` rolls out new weights by
        # writing a checkpoint with another value (scripts.chaos.write_weights).
        self.register_buffer("generation", torch.zeros(()))

    def _behaviour(self) -> dict[str, Any]:
        """The `Control` actor's settings; none while it does not exist."""
        if self._control is None:
            try:
                self._control = ray.get_actor(self.control, namespace=GATE_NAMESPACE)
            except ValueError:
                return {}
        behaviour: dict[str, Any] = ray.get(self._control.get.remote())
        return behaviour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay_s, oom_above, gate = self.delay_s, self.oom_above, self.gate
        crash_on, crash_log = self.crash_on, self.crash_log
        if self.control is not None and bool(x.any()):  # warm-up and health checks send zeros
            behaviour = self._behaviour()
            delay_s = behaviour.get("delay_s", delay_s)
            oom_above = behaviour.get("oom_above", oom_above)
            gate = behaviour.get("gate", gate)
            crash_on = behaviour.get("crash_on", crash_on)
            crash_log = behaviour.get("crash_log", crash_log)
        if oom_above is not None and len(x) > oom_above:
            raise RuntimeError(f"CUDA out of memory (simulated above {oom_above} items)")
        levels = (x.mean(dim=(2, 3)) * 255).round().long().clamp(0, LEVELS - 1)
        colours = levels.tolist()
        if crash_on is not None and list(crash_on) in colours:
            if crash_log is not None:  # one line per death, for the test to count
                with open(crash_log, "a") as log:
                    log.write(f"{os.getpid()}\n")
            os._exit(1)  # a poison input: the replica's process dies mid-forward-pass
        if gate is not None and bool(x.any()):  # warm-up and health checks send zeros
            held = ray.get_actor(gate, namespace=GATE_NAMESPACE)
            replica = serve.get_replica_context().replica_id.to_full_id_str()
            ray.get(held.enter.remote(replica, colours))
            waiter = threading.Event()
            while not ray.get(held.is_open.remote()):
                waiter.wait(0.05)  # the model is held on purpose: this is what is under test
        if delay_s:
            threading.Event().wait(delay_s)  # simulated compute time
        # Logits 30, 20, 10 at the red, green and blue level, 0 elsewhere: a strict top three.
        where = levels + torch.arange(len(CHANNELS), device=x.device) * LEVELS
        rank = torch.tensor([30.0, 20.0, 10.0], device=x.device).expand(len(x), -1)
        return torch.zeros(len(x), len(self.categories), device=x.device).scatter(1, where, rank)


def echo(
    delay_s: float = 0.0,
    oom_above: int | None = None,
    gate: str | None = None,
    crash_on: list[int] | None = None,
    crash_log: str | None = None,
    control: str | None = None,
) -> Echo:
    return Echo(
        delay_s=delay_s,
        oom_above=oom_above,
        gate=gate,
        crash_on=crash_on,
        crash_log=crash_log,
        control=control,
    )
