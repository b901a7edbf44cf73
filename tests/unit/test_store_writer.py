"""StoreWriter: the state stores' writes, run a batch at a time by whoever has time (the worker's loop)."""

from __future__ import annotations

import pytest

from driftloop.streams.state.store import StoreWriter


def _write(name: str, batches: list[int], log: list[str]):
    for i, records in enumerate(batches):
        log.append(f"{name}{i}")
        yield records


def test_writes_run_in_submission_order_a_batch_per_step_and_only_when_asked():
    log: list[str] = []
    writer = StoreWriter()
    first = writer.submit(_write("a", [1000, 500], log))
    second = writer.submit(_write("b", [200], log))
    assert log == [] and not writer.idle  # submitting writes nothing
    assert writer.step() == 1000 and log == ["a0"]
    assert writer.step() == 500 and not first.done()  # its last batch is written, its end not yet seen
    assert writer.step() == 0 and first.done()  # the end of a write is a step of its own
    assert writer.step() == 200 and log == ["a0", "a1", "b0"]
    assert writer.step() == 0 and second.done() and writer.idle
    assert writer.step() == 0


def test_run_writes_batches_until_its_share_of_records_is_written():
    log: list[str] = []
    writer = StoreWriter()
    writer.submit(_write("a", [1000, 1000, 1000], log))
    writer.run(1500)
    assert log == ["a0", "a1"]  # a batch is never split: the second takes the share past 1,500
    writer.run(0)
    assert log == ["a0", "a1"]


def test_finish_writes_until_the_given_write_and_those_before_it_are_done():
    log: list[str] = []
    writer = StoreWriter()
    writer.submit(_write("a", [10, 10], log))
    middle = writer.submit(_write("b", [10], log))
    writer.submit(_write("c", [10], log))
    writer.finish(middle)
    assert middle.done() and log == ["a0", "a1", "b0"]
    writer.finish()
    assert writer.idle and log == ["a0", "a1", "b0", "c0"]


def test_a_failing_write_fails_its_future_and_the_next_one_goes_on():
    def failing():
        yield 10
        raise OSError("disk full")

    log: list[str] = []
    writer = StoreWriter()
    broken = writer.submit(failing())
    after = writer.submit(_write("b", [10], log))
    writer.finish()
    with pytest.raises(OSError, match="disk full"):
        broken.result()
    assert after.done() and log == ["b0"]
