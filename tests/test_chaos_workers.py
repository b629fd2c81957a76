"""pipelines.evaluate.on_live_workers: the evaluation's batches on Ray actors, where a worker
that dies (its process or node; here ray.kill) is dropped and its batch redone by a live one,
results in the tasks' order; with every worker dead, one line says so instead of a hang."""
import time

import pytest

from pipelines.evaluate import on_live_workers

pytestmark = pytest.mark.timeout(120)


def _doublers(ray, n: int) -> list:
    class Doubler:               # defined here: Ray ships it by value (workers can't import test modules)
        def run(self, x: int) -> int:
            return 2 * x
    workers = [ray.remote(num_cpus=0)(Doubler).remote() for _ in range(n)]
    ray.get([w.run.remote(0) for w in workers])
    return workers


def _kill(ray, worker) -> None:
    """ray.kill, and wait until the actor is dead: the kill is asynchronous, and calls made
    before it lands are still answered (the step would see a live worker)."""
    ray.kill(worker, no_restart=True)
    for _ in range(200):
        try:
            ray.get(worker.run.remote(0), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor still answers after ray.kill")


def test_a_dead_workers_batches_are_redone_by_the_live_one_in_order(ray_local):
    ray = ray_local
    live, dead = _doublers(ray, 2)
    _kill(ray, dead)
    got = list(on_live_workers([dead, live], list(range(10)), lambda w, t: w.run.remote(t)))
    assert got == [2 * t for t in range(10)]


def test_with_every_worker_dead_the_step_fails_in_one_line(ray_local):
    ray = ray_local
    workers = _doublers(ray, 2)
    for w in workers:
        _kill(ray, w)
    with pytest.raises(RuntimeError) as e:
        list(on_live_workers(workers, [1, 2, 3], lambda w, t: w.run.remote(t)))
    assert "\n" not in str(e.value) and "all 2 evaluation workers died" in str(e.value)
