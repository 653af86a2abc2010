"""`--executor ray`: a stage's shards run on a pool of Ray actors, handed out one at a time as actors free up.

The driver (this process) streams the inputs into shards once, runs `Stage.prepare_run`, and sends each
uncommitted shard's records to the next free actor. Each actor holds one stage instance, opened once (its
models load once per actor), and commits shards with the runner's own protocol (`.partial`, stats.json,
rename) on the shared output folder, so local, SLURM and Ray runs resume each other's folders. The driver
then finalizes and writes summary.json as the local runner does.

An actor that dies (its process or its node) costs only the shards it held: they go to a new actor, up
to `MAX_ATTEMPTS` times, after which the run ends with one line naming them. A stage's own error (a
UserError, a bug) ends the run as it would locally. Ctrl-C kills the actors; their `.partial` folders
are redone on the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from unimo_pipe.pipeline.errors import UserError
from unimo_pipe.pipeline.progress import Progress
from unimo_pipe.pipeline.stage import Record, RunContext, Stage

logger = logging.getLogger("unimo_pipe")

MAX_ATTEMPTS = 3  # per shard, counting the first
TASKS_PER_ACTOR = 2  # one running and one queued, so an actor never waits for the driver


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'unimo-pipe[ray]' (or pip install ray)") from None
    return ray


class _ShardWorker:
    """One Ray actor: a stage instance that opens on its first shard and commits every shard it is given."""

    def __init__(self, stage_class: type[Stage], options: Any, out, config_hash: str, strict: bool):
        from unimo_pipe.pipeline.formats import is_committed

        self.stage, self.options, self.opened = stage_class(), options, False
        self.run_context = RunContext(out=out, config_hash=config_hash, strict=strict,
                                      will_run=lambda index: not is_committed(out, index))
        self.progress = Progress(f"{stage_class.name} actor", stream=open(os.devnull, "w"), interval_s=1e9)

    def process(self, index: int, records: list[Record]) -> dict[str, Any]:
        from unimo_pipe.pipeline.runner import open_stage, run_shard

        if not self.opened:
            open_stage(self.stage, self.options, self.run_context)
            self.opened = True
        return run_shard(self.stage, self.options, index, records, self.run_context, self.progress)

    def close(self) -> None:
        self.stage.close()


@dataclass
class _Pool:
    """The driver's view of its actors: which shards each holds, and what to send next."""

    ray: Any
    make_actor: Any
    size: int
    pending: dict = field(default_factory=dict)  # ray future -> (actor, index, records, attempt)
    load: dict = field(default_factory=dict)  # actor -> shards it holds
    retries: deque = field(default_factory=deque)  # (index, records, attempt) whose actor died
    failed: dict = field(default_factory=dict)  # index -> why it could not be done

    def start(self) -> None:
        for _ in range(self.size):
            self.load[self.make_actor()] = 0

    def has_room(self) -> bool:
        return any(count < TASKS_PER_ACTOR for count in self.load.values())

    def submit(self, index: int, records: list[Record], attempt: int = 1) -> None:
        actor = min(self.load, key=self.load.get)
        self.load[actor] += 1
        self.pending[actor.process.remote(index, records)] = (actor, index, records, attempt)

    def wait_one(self, progress: Progress) -> bool:
        """Block until one shard finishes: count it (True), or send it again if its actor died (False)."""
        ray = self.ray
        [done], _ = ray.wait(list(self.pending), num_returns=1)
        actor, index, records, attempt = self.pending.pop(done)
        try:
            stats = ray.get(done)
        except ray.exceptions.RayActorError as exc:
            self._replace(actor)
            self._retry_or_fail(index, records, attempt, f"its Ray worker died ({type(exc).__name__})")
            return False
        except ray.exceptions.RayTaskError as exc:  # the stage's own error: raised as a local run raises it
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc.as_instanceof_cause()) from None
        self.load[actor] -= 1
        progress.update(stats["ok"] + stats["skipped"], failed=stats["failed"])
        return True

    def _replace(self, dead) -> None:
        # Killed for certain first: an actor only unreachable for a while must not write a shard's .partial
        # folder while its new owner writes it too.
        with contextlib.suppress(Exception):
            self.ray.kill(dead, no_restart=True)
        if dead in self.load:
            del self.load[dead]
            self.load[self.make_actor()] = 0
        for future, (actor, index, records, attempt) in list(self.pending.items()):
            if actor is dead:  # its queued shards die with it
                del self.pending[future]
                self._retry_or_fail(index, records, attempt, "its Ray worker died")

    def _retry_or_fail(self, index: int, records: list[Record], attempt: int, why: str) -> None:
        if attempt >= MAX_ATTEMPTS:
            self.failed[index] = f"{why}, {attempt} times"
            return
        logger.warning("shard %d: %s; sending it to another worker (attempt %d of %d)", index, why, attempt + 1,
                       MAX_ATTEMPTS)
        self.retries.append((index, records, attempt + 1))

    def stop(self, *, gracefully: bool) -> None:
        """Close every actor's stage (worker processes) when the run went well, then end the actors."""
        if gracefully:
            try:
                self.ray.get([actor.close.remote() for actor in self.load], timeout=60)
            except Exception as exc:  # an actor that cannot close is killed below all the same
                logger.warning("ray: closing the stage actors failed (%s)", type(exc).__name__)
        for actor in self.load:
            self.ray.kill(actor)
        self.load.clear()


class RayExecutor:
    """Runs a stage's shards on Ray actors (see the module's docstring)."""

    def __init__(self, *, address: str | None, workers: int, cpus_per_worker: float, gpus_per_worker: float):
        self.address, self.workers = address, workers
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker

    @classmethod
    def from_options(cls, options: Any) -> RayExecutor:
        _ray()  # one clear line now, before any output folder is touched, if Ray is missing
        return cls(address=options.ray_address or os.environ.get("RAY_ADDRESS") or None, workers=options.ray_workers,
                   cpus_per_worker=options.cpus_per_worker, gpus_per_worker=options.gpus_per_worker)

    def run(self, stage: Stage, options: Any, work: Iterator[tuple[int, list[Record]]], run_context: RunContext,
            progress: Progress) -> int:
        """Process every (index, records) of `work` on the actors; the number of shards committed."""
        from unimo_pipe.pipeline.runner import prepare_run

        work = iter(work)
        first = next(work, None)
        if first is None:
            return 0
        prepare_run(stage, options, run_context)
        ray = _ray()
        started_here = self._connect(ray)
        pool = _Pool(ray, self._actor_factory(ray, stage, options, run_context), self._pool_size(ray))
        done, finished = 0, False
        try:
            pool.start()
            for index, records in _chain([first], work):
                while not pool.has_room() or pool.retries:
                    done += self._drain_one(pool, progress)
                pool.submit(index, records)
            while pool.pending or pool.retries:
                done += self._drain_one(pool, progress)
            finished = True
        finally:
            pool.stop(gracefully=finished)
            if started_here:
                ray.shutdown()
        if pool.failed:
            shards = "; ".join(f"shard {index}: {why}" for index, why in sorted(pool.failed.items()))
            raise UserError(f"{stage.name}: {len(pool.failed)} shards could not be done ({shards}): rerun the same "
                            "command to retry them (finished shards are kept)")
        return done

    def _drain_one(self, pool: _Pool, progress: Progress) -> int:
        """Resend one shard whose actor died, or wait for one to finish; 1 if a shard was committed."""
        if pool.retries and pool.has_room():
            pool.submit(*pool.retries.popleft())
            return 0
        return int(pool.wait_one(progress))

    def _connect(self, ray) -> bool:
        """Join the cluster (or start a local instance); True when this process started it."""
        if ray.is_initialized():
            return False
        settings = {"log_to_driver": False, "include_dashboard": False} if self.address is None else {}
        try:
            ray.init(address=self.address or "local", **settings)  # "local": a new instance, whatever the env says
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {self.address} ({type(exc).__name__}): check "
                            "--ray-address (or RAY_ADDRESS) and that `ray start` runs there") from None
        logger.info("ray: %s", "started a local instance" if self.address is None else f"joined {self.address}")
        return self.address is None

    def _pool_size(self, ray) -> int:
        if self.workers:
            return self.workers
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.cpus_per_worker) if self.cpus_per_worker else int(cpus))

    def _actor_factory(self, ray, stage: Stage, options: Any, run_context: RunContext):
        gpus = gpus_per_actor(self.gpus_per_worker, wants_gpu=stage.wants_gpu(options),
                              cluster_gpus=ray.cluster_resources().get("GPU", 0))
        actor_class = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=gpus, max_restarts=0)(_ShardWorker)
        arguments = (type(stage), options, run_context.out, run_context.config_hash, run_context.strict)
        return lambda: actor_class.remote(*arguments)


def gpus_per_actor(asked: float, *, wants_gpu: bool, cluster_gpus: float) -> float:
    """--gpus-per-worker, or 1 for a stage that can use a GPU on a cluster that has one (without a
    reservation, Ray hides the GPUs from an actor and the stage would silently run on its CPU)."""
    if asked:
        return asked
    return 1.0 if wants_gpu and cluster_gpus >= 1 else 0.0


def _chain(head: list, tail: Iterator) -> Iterator:
    yield from head
    yield from tail
