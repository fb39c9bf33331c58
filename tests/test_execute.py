"""Stage 4, run: the crash-isolation policy as a pure state machine (no processes),
the choice of executor, the in-process executor and the progress bar. Worker
processes are in test_workers.py and test_reliability.py, clusters in
test_remote_cluster.py."""

from __future__ import annotations

import pytest

from daskmri import DaskmriError, RecordError
from daskmri.execute import (
    POISON_REASON,
    CrashPolicy,
    InProcess,
    Isolation,
    Skipping,
    executor_for,
    progress_bar,
)
from daskmri.record import Record
from daskmri.settings import Compute


def parts_of(*sizes: int) -> list[list[tuple[int, Record]]]:
    """Chunks of records P/1, P/2, ... with their slots."""
    parts, slot = [], 0
    for size in sizes:
        parts.append([(slot + k, Record("P", "O", slot + k + 1, None)) for k in range(size)])
        slot += size
    return parts


class TestCrashPolicy:
    def test_chunks_run_in_order_until_something_dies(self):
        policy = CrashPolicy(parts_of(2, 2, 2), reader=None)
        assert [policy.take(running=[]), policy.take(running=[0]), policy.take(running=[0, 1])] == [
            0,
            1,
            2,
        ]
        assert policy.take(running=[0, 1, 2]) is None and not policy.pending

    def test_chunks_lost_together_run_again_first_and_alone(self):
        policy = CrashPolicy(parts_of(2, 2, 2, 2), reader=None)
        for running in ([], [0], [0, 1]):
            policy.take(running=running)
        # A process died with chunks 0 and 1 in flight (2 finished): none is known
        # to be the killer, so nothing is searched yet.
        assert policy.died([1, 0]) == []
        assert list(policy.queue) == [0, 1, 3]
        assert policy.take(running=[]) == 0
        assert policy.take(running=[0]) is None  # a suspect runs alone
        policy.finished(0)
        assert policy.take(running=[]) == 1
        assert policy.take(running=[1]) is None  # nothing starts beside a suspect
        policy.finished(1)
        assert policy.take(running=[]) == 3 and policy.take(running=[3]) is None

    def test_a_chunk_that_dies_alone_is_searched_and_runs_without_its_killers(self):
        parts = parts_of(3, 3)
        policy = CrashPolicy(parts, reader=None)
        assert policy.take(running=[]) == 0
        assert policy.died([0]) == [0]
        assert policy.deaths[0] == 1
        policy.convict(0, [("P", 2)])
        reader = policy.reader_for(0)
        assert isinstance(reader, Skipping) and reader.skip == frozenset({("P", 2)})
        assert policy.reader_for(1) is None  # the other chunk reads everything
        assert policy.isolation().records == (("P", 2),)

    def test_a_cluster_reports_every_killed_chunk_as_alone(self):
        policy = CrashPolicy(parts_of(1, 1, 1), reader=None)
        assert policy.died([0, 2], alone=True) == [0, 2]
        assert policy.deaths == {0: 1, 2: 1}

    def test_a_chunk_that_keeps_dying_with_no_killer_stops_the_run(self):
        policy = CrashPolicy(parts_of(4), reader=None)
        for _ in range(CrashPolicy.MAX_SOLO_DEATHS):
            policy.convict(*policy.died([0]), [])  # below the limit: it runs again
        policy.died([0])
        with pytest.raises(DaskmriError, match=r"killed its worker process 4 times.*memory"):
            policy.convict(0, [])

    @pytest.mark.parametrize("workers", [1, 2, 3])
    @pytest.mark.parametrize("killers", [[], [5], [2, 3, 11], [1, 12]])
    def test_simulated_pool_isolates_exactly_the_killers(self, workers, killers):
        """A pool simulated without processes: a chunk that reaches a record in
        ``killers`` (not skipped) kills its process, and the pool breaks, losing
        every chunk in flight. Every chunk must finish, each killer be found, no
        innocent record be skipped, and the number of deaths stay bounded."""
        parts = parts_of(4, 4, 4)
        policy = CrashPolicy(parts, reader="read")
        killing = {("P", i) for i in killers}
        finished, deaths = [], 0
        while policy.pending:
            running: list[int] = []
            while len(running) < workers and (j := policy.take(running=running)) is not None:
                running.append(j)
            kills = [
                j
                for j in running
                if {r.key for _, r in parts[j]} & (killing - _skipped(policy.reader_for(j)))
            ]
            if not kills:
                finished.extend(running)
                continue
            deaths += 1
            assert deaths < 20, "the policy does not converge"
            for j in policy.died(running):
                policy.convict(j, sorted({r.key for _, r in parts[j]} & killing))
        assert sorted(finished) == [0, 1, 2]
        assert set(policy.isolation().records) == killing
        assert deaths <= 2 * len(killing)


def _skipped(reader) -> set:
    return set(reader.skip) if isinstance(reader, Skipping) else set()


def test_skipping_drops_only_its_records_with_the_poison_reason():
    read = Skipping(lambda record: record.instance, frozenset({("P", 2)}))
    assert read(Record("P", "O", 1, "/a.dcm")) == 1
    with pytest.raises(RecordError) as caught:
        read(Record("P", "O", 2, "/b.dcm"))
    assert caught.value.reason == POISON_REASON and caught.value.path == "/b.dcm"


def test_isolations_add_up():
    total = Isolation((("B", 1),), 1.5) + Isolation((("A", 2), ("B", 1)), 2.0)
    assert total == Isolation((("A", 2), ("B", 1)), 3.5)


@pytest.mark.parametrize(
    ("compute", "n_tasks", "kind"),
    [
        (Compute(), 1, "in-process"),
        (Compute(), 2, "processes"),
        (Compute(scheduler="threads"), 5, "in-process"),
        (Compute(scheduler="sync"), 5, "in-process"),
        (Compute(scheduler="processes"), 1, "processes"),
    ],
)
def test_executor_for_a_local_scheduler(compute, n_tasks, kind):
    executor = executor_for(compute, None, n_tasks)
    assert executor.kind == kind
    if kind == "in-process":
        assert executor.scheduler == (compute.scheduler or "sync")


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_in_process_runs_every_chunk_once_in_order_and_counts_them(scheduler):
    class Count:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    parts = parts_of(3, 1, 2)
    count = Count()
    results, isolation = InProcess(scheduler).run(
        lambda part, reader: [reader(r) for _, r in part],
        parts,
        lambda r: r.instance,
        progress=count,
    )
    assert results == [[1, 2, 3], [4], [5, 6]]
    assert count.n == 3 and isolation == Isolation()


def test_progress_bar_counts_chunks_on_stderr(capsys):
    with progress_bar(3) as bar:
        bar.update(1)
        bar.update(2)
    assert "| 3/3 chunks |" in capsys.readouterr().err


def test_a_disabled_progress_bar_prints_nothing(capsys):
    with progress_bar(3, enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_a_cluster_runs_share_of_the_bar_ends_full_and_ignores_late_ticks():
    from daskmri.execute.cluster import _Ticks

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    ticks = _Ticks(bar, 3)
    ticks.tick()
    ticks.finish()  # two callbacks had not run yet when the wait returned
    ticks.tick()  # ... and run now
    assert bar.n == 3
    _Ticks(None, 2).tick()  # no bar: nothing to do
