"""The worker pool with small real child processes (spawned, killed, hung, recycled)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from server.pool import PoolBootError, PoolConfig, PoolError, QueueFull, Unavailable, WorkerPool
from tests.pool_handlers import EventLog, MisbehavingHandler


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def make_pool(spec=None, **config) -> WorkerPool:
    return WorkerPool(MisbehavingHandler, spec or {}, PoolConfig(**{"size": 2, **config}))


def test_jobs_run_on_every_worker_and_errors_stay_per_job():
    async def scenario():
        pool = make_pool()
        await pool.start()
        try:
            results = await asyncio.gather(*(pool.submit({"kind": "echo", "value": i})
                                             for i in range(10)))
            assert [r["value"] for r in results] == list(range(10))
            assert {r["pid"] for r in results} == set(pool.worker_pids())
            with pytest.raises(PoolError) as failure:
                await pool.submit({"kind": "raise"})
            assert failure.value.code == "internal_error"
            assert "always fails" in failure.value.info.details
            # The failing job did not take its worker down.
            after = await asyncio.gather(*(pool.submit({"kind": "echo"}) for _ in range(4)))
            assert {r["pid"] for r in after} <= {r["pid"] for r in results}
        finally:
            await pool.close()
        assert pool.worker_pids() == []

    run(scenario())


def test_killed_busy_worker_is_replaced_and_its_job_retried(tmp_path):
    async def scenario():
        pool = make_pool()
        events = EventLog(pool)
        await pool.start()
        try:
            first_pids = set(pool.worker_pids())
            fifo = tmp_path / "busy"
            os.mkfifo(fifo)
            future = pool.submit({"kind": "hang_first_time", "marker": str(tmp_path / "mark"),
                                  "fifo": str(fifo)})
            # Returns once the worker is inside the job: it is busy, mid-task.
            victim = int(await asyncio.get_running_loop().run_in_executor(None, fifo.read_text))
            assert pool.busy_pids() == [victim]
            os.kill(victim, signal.SIGKILL)
            result = await future
            assert result["retried"] and result["pid"] != victim
            await events.wait_for(lambda: pool.ready_count == 2)
            assert victim not in pool.worker_pids()
            assert len(set(pool.worker_pids()) - first_pids) == 1
        finally:
            await pool.close()

    run(scenario())


def test_job_that_kills_every_worker_fails_after_one_retry():
    async def scenario():
        pool = make_pool()
        events = EventLog(pool)
        await pool.start()
        try:
            with pytest.raises(PoolError) as failure:
                await pool.submit({"kind": "crash"})
            assert failure.value.code == "worker_crashed"
            assert "2 time(s)" in failure.value.message
            await events.wait_for(lambda: pool.ready_count == 2)
            assert (await pool.submit({"kind": "echo", "value": 1}))["value"] == 1
        finally:
            await pool.close()

    run(scenario())


def test_hung_job_times_out_and_its_worker_is_replaced():
    async def scenario():
        pool = make_pool(size=1, task_timeout=0.5)
        events = EventLog(pool)
        await pool.start()
        try:
            [old_pid] = pool.worker_pids()
            with pytest.raises(PoolError) as failure:
                await pool.submit({"kind": "hang"})
            assert failure.value.code == "timeout"
            await events.wait_for(
                lambda: pool.ready_count == 1 and old_pid not in pool.worker_pids())
            assert (await pool.submit({"kind": "echo"}))["pid"] != old_pid
        finally:
            await pool.close()

    run(scenario())


def test_recycling_replaces_workers_without_losing_a_job():
    async def scenario():
        pool = make_pool(size=1, max_tasks=3)  # limit 3 plus a jitter of 0 or 1
        events = EventLog(pool)
        await pool.start()
        try:
            first = await asyncio.gather(*(pool.submit({"kind": "echo", "value": i})
                                           for i in range(10)))
            # The worker passed its limit: a replacement boots, then the old one retires.
            await events.wait_for(lambda: events.seen.count("ready") == 2
                                  and events.seen.count("exit") == 1)
            second = await asyncio.gather(*(pool.submit({"kind": "echo", "value": i})
                                            for i in range(10)))
            assert [r["value"] for r in first + second] == list(range(10)) * 2
            first_pids, second_pids = {r["pid"] for r in first}, {r["pid"] for r in second}
            assert first_pids.isdisjoint(second_pids)
            assert pool.ready_count == 1
        finally:
            await pool.close()

    run(scenario())


def test_boot_error_halts_with_the_workers_message():
    async def scenario():
        fatal = []
        pool = WorkerPool(MisbehavingHandler, {"boot_error": True}, PoolConfig(size=2),
                          on_fatal=fatal.append)
        with pytest.raises(PoolBootError, match="model files are missing"):
            await pool.start()
        assert fatal and pool.worker_pids() == []

    run(scenario())


def test_workers_dying_before_ready_halt_instead_of_crash_looping():
    async def scenario():
        pool = make_pool({"boot_crash": True}, size=1)
        with pytest.raises(PoolBootError, match="keep dying before they are ready"):
            await pool.start()

    run(scenario())


def test_full_queue_and_no_live_worker_are_refused():
    async def scenario():
        pool = make_pool(size=1, queue_size=2, task_timeout=2)
        events = EventLog(pool)
        await pool.start()
        try:
            hung = pool.submit({"kind": "hang"})
            await events.wait_for(lambda: pool.busy_count == 1)
            waiting = [pool.submit({"kind": "echo"}) for _ in range(2)]
            with pytest.raises(QueueFull) as full:
                pool.submit({"kind": "echo"})
            assert full.value.code == "queue_full"
            # Kill the only worker: its hung job is retried, the replacement boots; until it is
            # ready, new jobs are refused rather than queued behind nothing.
            os.kill(pool.busy_pids()[0], signal.SIGKILL)
            await events.wait_for(lambda: "exit" in events.seen)
            with pytest.raises(Unavailable):
                pool.submit({"kind": "echo"})
            assert pool.queued == 3
            await events.wait_for(lambda: pool.ready_count == 1)
            # The retried hang goes first (it was accepted first), times out, and the echoes
            # then run on the next replacement: every accepted job ends.
            assert [(await f)["pid"] for f in waiting] == pool.worker_pids() * 2
            assert hung.exception().code == "timeout"
        finally:
            await pool.close(timeout=0)
        for future in [hung, *waiting]:
            assert future.done()

    run(scenario())


def test_close_lets_accepted_jobs_finish():
    async def scenario():
        pool = make_pool()
        await pool.start()
        futures = [pool.submit({"kind": "echo", "value": i}) for i in range(6)]
        await pool.close()
        assert [f.result()["value"] for f in futures] == list(range(6))
        with pytest.raises(PoolError) as refused:
            pool.submit({"kind": "echo"})
        assert refused.value.code == "shutting_down"

    run(scenario())
