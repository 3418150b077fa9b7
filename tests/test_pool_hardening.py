"""The pool against stopped, wedged and memory-hungry workers, spawn failures and lane priority,
with small real child processes (tests/pool_handlers.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time

import pytest

from server.pool import Lane, PoolConfig, PoolError, WorkerPool
from tests.pool_handlers import EventLog, MisbehavingHandler


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def make_pool(**config) -> WorkerPool:
    return WorkerPool(MisbehavingHandler, {}, PoolConfig(**{"size": 2, **config}))


def test_stopped_idle_worker_stops_counting_as_ready_and_is_replaced():
    async def scenario():
        pool = make_pool(ping_interval=0.2, ping_timeout=0.6)
        events = EventLog(pool)
        await pool.start()
        victim = pool.worker_pids()[0]
        try:
            os.kill(victim, signal.SIGSTOP)
            await events.wait_for(lambda: pool.ready_count == 1, poll=0.05)
            assert victim in pool.worker_pids()  # not answering: no longer ready
            await events.wait_for(lambda: (victim, "unresponsive") in events.exits)
            await events.wait_for(lambda: pool.ready_count == 2)
            assert victim not in pool.worker_pids()
            assert (await pool.submit({"kind": "echo", "value": 1}))["value"] == 1
        finally:
            _cont(victim)
            await pool.close()

    run(scenario())


def test_stopped_worker_never_blocks_the_loop_and_its_jobs_move_on():
    """A worker that stopped reading gets 4 MB jobs: the parent's writes never block (the loop
    keeps running timers), the jobs it never took go to the other worker, and it is replaced."""
    async def scenario():
        pool = make_pool(ping_interval=30, ping_timeout=3.0)  # only the hand-over catches it
        events = EventLog(pool)
        await pool.start()
        victim, other = pool.worker_pids()
        loop = asyncio.get_running_loop()
        ticks = []

        def tick():  # until every job is answered: past the hand-over, where gaps would show
            ticks.append(time.monotonic())
            if not all(future.done() for future in futures):
                loop.call_later(0.01, tick)

        try:
            os.kill(victim, signal.SIGSTOP)
            loop.call_soon(tick)
            data = os.urandom(4 * 2**20)
            futures = [pool.submit({"kind": "big", "data": data}) for _ in range(3)]
            results = await asyncio.gather(*futures)
            assert [r["size"] for r in results] == [len(data)] * 3
            assert {r["pid"] for r in results} == {other}
            assert (victim, "unresponsive") in events.exits
            # The loop kept turning the whole time: no gap near the 3 s hand-over timeout (a
            # blocked write would stall it until then; a loaded machine may pause it briefly).
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert ticks and max(gaps) < 1.5, max(gaps)
            await events.wait_for(lambda: pool.ready_count == 2)
        finally:
            _cont(victim)
            await pool.close()

    run(scenario())


def test_interactive_jobs_go_before_background_ones_and_background_is_capped():
    async def scenario():
        pool = make_pool(size=2)  # background may hold 1 of the 2 workers
        events = EventLog(pool)
        await pool.start()
        try:
            background = [pool.submit({"kind": "echo", "value": f"b{i}"}, Lane.BACKGROUND)
                          for i in range(6)]
            interactive = [pool.submit({"kind": "echo", "value": f"i{i}"}) for i in range(3)]
            await asyncio.gather(*background, *interactive)
            order = [(lane, value) for lane, value, _ in events.dispatches]
            lanes = [lane for lane, _ in order]
            # Once an interactive job waited, no further background job was dispatched before
            # it: every interactive job went out before the second background one.
            assert lanes.index(Lane.INTERACTIVE) <= 1
            assert [v for _, v in order if str(v).startswith("i")] == ["i0", "i1", "i2"]
            last_interactive = max(i for i, lane in enumerate(lanes) if lane is Lane.INTERACTIVE)
            assert lanes[:last_interactive + 1].count(Lane.BACKGROUND) <= 1
        finally:
            await pool.close()

    run(scenario())


def test_background_lane_never_holds_more_than_its_cap():
    async def scenario():
        pool = make_pool(size=3, background_workers=1)
        events = EventLog(pool)
        await pool.start()
        try:
            await asyncio.gather(*(pool.submit({"kind": "echo", "value": i}, Lane.BACKGROUND)
                                   for i in range(8)))
            holding = [busy for _, _, busy in events.dispatches]
            assert holding and max(holding) == 1
        finally:
            await pool.close()

    run(scenario())


def test_worker_over_the_memory_limit_is_recycled_without_losing_a_job():
    async def scenario():
        pool = make_pool(size=1, max_worker_rss_mb=150)
        events = EventLog(pool)
        await pool.start()
        [first] = pool.worker_pids()
        try:
            assert (await pool.submit({"kind": "grow", "mb": 200}))["pid"] == first
            # Jobs sent while the replacement boots are served (by the old worker or the new).
            later = [pool.submit({"kind": "echo", "value": i}) for i in range(5)]
            assert [r["value"] for r in await asyncio.gather(*later)] == list(range(5))
            await events.wait_for(lambda: (first, "memory") in events.exits)
            assert pool.ready_count == 1 and first not in pool.worker_pids()
        finally:
            await pool.close()

    run(scenario())


def test_spawn_failures_are_retried_with_backoff_until_the_pool_is_whole(caplog):
    async def scenario():
        pool = make_pool(size=2)
        events = EventLog(pool)
        await pool.start()
        real_process = pool._context.Process
        failures = []

        def failing_process(*args, **kwargs):
            if len(failures) < 4:
                failures.append(1)
                raise OSError(errno.EMFILE, "Too many open files")
            return real_process(*args, **kwargs)

        pool._context.Process = failing_process
        try:
            victim = pool.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            await events.wait_for(lambda: len(failures) == 4 and pool.ready_count == 2)
            assert victim not in pool.worker_pids()
        finally:
            await pool.close()
        return failures

    with caplog.at_level(logging.WARNING, logger="ppocr.pool"):
        failures = run(scenario())
    assert len(failures) == 4
    spawn_lines = [r for r in caplog.records if "cannot start a worker" in r.getMessage()]
    assert 1 <= len(spawn_lines) < 4  # throttled: not one line per failure


def test_unexpected_error_is_logged_in_the_worker_and_sent_as_details(capfd):
    async def scenario():
        pool = make_pool(size=1)
        await pool.start()
        try:
            with pytest.raises(PoolError) as failure:
                await pool.submit({"kind": "raise"}, request_id="req-42")
        finally:
            await pool.close()
        return failure.value

    error = run(scenario())
    assert error.code == "internal_error" and "always fails" not in error.message
    assert "ValueError: this input always fails" in error.info.details
    logged = capfd.readouterr().err
    assert "request req-42" in logged and "Traceback" in logged and "always fails" in logged


def _cont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_a_promoted_background_job_goes_before_the_remaining_background_ones():
    async def scenario():
        pool = make_pool(size=1)
        events = EventLog(pool)
        await pool.start()
        try:
            futures = [pool.submit({"kind": "echo", "value": i}, Lane.BACKGROUND)
                       for i in range(5)]
            assert pool.promote(futures[4])  # an interactive request now waits for it
            assert not pool.promote(asyncio.get_running_loop().create_future())
            await asyncio.gather(*futures)
            order = [value for _, value, _ in events.dispatches]
            assert order[:2] == [0, 4]  # 0 was already running
        finally:
            await pool.close()

    run(scenario())


def test_background_jobs_take_every_worker_only_after_interactive_traffic_stops():
    async def scenario():
        pool = make_pool(size=2, background_takeover_s=2.0)  # background cap: 1 of 2
        events = EventLog(pool)
        await pool.start()
        try:
            await pool.submit({"kind": "echo", "value": "interactive"})
            background = [pool.submit({"kind": "sleep", "seconds": 0.7, "value": i},
                                      Lane.BACKGROUND) for i in range(8)]
            await asyncio.gather(*background)
            holding = [busy for lane, _, busy in events.dispatches if lane is Lane.BACKGROUND]
            # Right after the interactive request one worker stayed free for the next one;
            # once none came for 2 s the job used both.
            assert holding[0] == 1 and max(holding) == 2
        finally:
            await pool.close()

    run(scenario())
