"""What the benchmarks share: a model in its own long-lived worker process, and interleaved timing rounds.

A worker runs a small script (``python -c SCRIPT CONFIG_JSON``) that builds its model once, prints ``{"ready": ...}``
and then answers each stdin line ``n`` with ``{"times": [ms ...], "faults": minor page faults}`` for ``n`` timed runs;
``0`` (or EOF) ends it. Taking turns in a rotating order, the workers see the same load changes of a shared machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import dataclass, field

__all__ = ["SERVE", "Worker", "measure"]

# The worker side of the protocol, as source appended to each worker script (workers run ``python -c``, in this
# project's interpreter or in upstream's, so they cannot import this module). The script defines its model, then ends
# with ``serve(step, warmup)``: ``step`` is one timed call; ``reset`` runs after the warm-up (clear counters);
# ``report(n)`` adds entries to each answer.
SERVE = r"""
def serve(step, warmup, reset=None, report=None):
    import json, resource, sys, time
    import torch
    with torch.inference_mode():
        for _ in range(warmup):
            step()
        if reset is not None:
            reset()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            n = int(line)
            if n <= 0:
                break
            times = []
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(n):
                start = time.perf_counter()
                step()
                times.append((time.perf_counter() - start) * 1000)
            answer = {"times": times, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}
            if report is not None:
                answer.update(report(n))
            print(json.dumps(answer), flush=True)
"""


@dataclass
class Worker:
    """One model in its own process; :meth:`time` runs ``n`` forwards there and returns their times in ms."""

    name: str
    python: str
    config: dict
    pythonpath: str | None
    script: str
    iters_scale: float = 1.0
    ready: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    faults: int = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        # cwd "/": nothing in the working directory may shadow the package the worker is meant to import.
        self.proc = subprocess.Popen(
            [self.python, "-c", self.script, json.dumps(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env=env,
        )
        self.ready = self._read()

    def time(self, n: int) -> list[float]:
        n = max(1, round(n * self.iters_scale))
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        answer = self._read()
        times = answer["times"]
        self.faults += answer["faults"]
        self.times += times
        self.rounds.append(statistics.median(times))
        return times

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("0\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            raise RuntimeError(f"benchmark worker {self.name!r} failed:\n{self.proc.stderr.read()[-3000:]}")
        return json.loads(line)


def measure(workers: list[Worker], rounds: int, iters: int, tolerant: bool = False) -> dict[str, str]:
    """Start the workers, then ``rounds`` rounds of ``iters`` forwards each, the order rotating every round.

    With ``tolerant`` a worker that fails to start is left out (and removed from ``workers``) instead of ending the
    run; returns ``{name: its error}`` for those.
    """
    failed: dict[str, str] = {}
    try:
        for worker in list(workers):
            try:
                worker.start()
            except RuntimeError as err:
                if not tolerant:
                    raise
                failed[worker.name] = str(err).strip().splitlines()[-1][:300]
                workers.remove(worker)
        for r in range(rounds):
            shift = r % len(workers)
            for worker in workers[shift:] + workers[:shift]:
                worker.time(iters)
    finally:
        for worker in workers:
            if hasattr(worker, "proc"):
                worker.stop()
    return failed
