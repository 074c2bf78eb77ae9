"""BucketSync: every transition of a bucket's grad-sync state machine, and every refused one."""
import pytest
import torch

from parallel.bucket_sync import BucketSync, SyncStatus


def _done_future(value=None) -> torch.futures.Future:
    fut = torch.futures.Future()
    fut.set_result(value)
    return fut


def test_the_happy_path_of_one_step():
    s = BucketSync(index=3, n_params=2)
    assert s.status == SyncStatus.RESET and not s.reduced
    assert s.grad_ready("a") is False and s.status == SyncStatus.RESET
    assert s.grad_ready("a") is False  # the same param twice counts once
    assert s.grad_ready("b") is True and s.status == SyncStatus.READY
    assert s.grad_ready("b") is False  # already READY: no second launch
    s.start(_done_future())
    assert s.status == SyncStatus.STARTED and s.in_flight and s.reduced
    s.finish()
    assert s.status == SyncStatus.FINISHED and not s.in_flight and s.reduced
    s.finish()  # waited already: a no-op
    s.reset()
    assert s.status == SyncStatus.RESET and s.grad_ready("a") is False  # the ready set was cleared


def test_force_ready_covers_unused_params():
    s = BucketSync(0, n_params=3)
    s.grad_ready("a")
    s.force_ready()
    assert s.status == SyncStatus.READY
    s.force_ready()  # a READY bucket waiting for its predecessors stays READY
    assert s.status == SyncStatus.READY


@pytest.mark.parametrize("setup, action, match", [
    ([], lambda s: s.start(_done_future()), "cannot start its reduction in state RESET"),
    ([], lambda s: s.finish(), "cannot finish its reduction in state RESET"),
    (["ready"], lambda s: s.finish(), "cannot finish its reduction in state READY"),
    (["ready", "start"], lambda s: s.reset(), "reset while its reduction is in flight"),
    (["ready", "start"], lambda s: s.grad_ready("x"), "cannot take a ready grad in state STARTED"),
    (["ready", "start"], lambda s: s.force_ready(), "cannot be forced ready in state STARTED"),
    (["ready", "start"], lambda s: s.start(_done_future()), "cannot start its reduction in state STARTED"),
    (["ready", "start", "finish"], lambda s: s.grad_ready("x"), "cannot take a ready grad in state FINISHED"),
    (["ready", "start", "finish"], lambda s: s.start(_done_future()), "cannot start its reduction in state FINISHED"),
])
def test_refused_transitions_name_the_bucket_and_the_state(setup, action, match):
    s = BucketSync(7, n_params=1)
    steps = {"ready": lambda: s.grad_ready("p"), "start": lambda: s.start(_done_future()), "finish": s.finish}
    for name in setup:
        steps[name]()
    before = s.status
    with pytest.raises(RuntimeError, match=f"bucket 7: {match}"):
        action(s)
    assert s.status == before  # a refused transition changes nothing


def test_one_param_gather_at_a_time():
    class Work:
        waited = 0

        def wait(self):
            Work.waited += 1

    s = BucketSync(1, n_params=1)
    s.wait_gather()  # nothing pending: a no-op
    s.start_gather(Work())
    with pytest.raises(RuntimeError, match="already pending"):
        s.start_gather(Work())
    s.wait_gather()
    s.wait_gather()
    assert Work.waited == 1
