"""SNNK adapters under DistributedDataParallel: gloo backend, 2 CPU processes (issue #5).

Deterministic on a loaded machine (issue #15 item 10): the rendezvous is a TCP store that
this test process owns on a port the OS picked (no port race, no store file), every
collective and the rendezvous have explicit timeouts, each worker waits at a barrier until
all ranks have finished their collectives and then destroys its process group in a
``finally`` (a rank that tears down while the other is still communicating, or a process
group left to interpreter shutdown, is what makes gloo abort), and the workers are joined
against a deadline with a message that says which rank failed and how.
"""

import datetime
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from snnk.nn import adapter_state_dict, add_adapters
from tests.nn.test_adapters import tiny_bert, token_batch

WORLD = 2
STEPS = 3
LABELS = torch.tensor([0, 1, 1, 0])
#: generous: the workers need a few seconds each, even beside busy loops
TIMEOUT = datetime.timedelta(seconds=120)
DEADLINE_S = 300.0


def _model():
    model = tiny_bert(seed=0, dropout=0.0).train()
    add_adapters(model, num_features=4, seed=0)
    with torch.no_grad():  # open the gates so that every Ψ trains from the first step
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(1.0)
    return model


def _train(model, rows: slice) -> None:
    """``STEPS`` plain SGD steps on ``rows`` of the fixed batch."""
    inputs = {k: v[rows] for k, v in token_batch(4, seed=2).items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        model(**inputs, labels=LABELS[rows]).loss.backward()
        opt.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        ddp = DistributedDataParallel(_model())
        half = 4 // WORLD
        _train(ddp, slice(rank * half, (rank + 1) * half))
        state = {k: v.clone().contiguous() for k, v in adapter_state_dict(ddp).items()}
        save_file(state, f"{out_dir}/rank{rank}.safetensors")
        del ddp, state  # the reducer's buffers go while the process group is alive
        dist.barrier()  # no rank tears down while another still communicates
    finally:
        dist.destroy_process_group()


def _run_workers(out_dir: str) -> None:
    """Spawn the ranks, join them against a deadline, fail with what went wrong."""
    # The parent owns the store: the OS picks a free port, nothing is left on disk.
    store = dist.TCPStore(
        "127.0.0.1", 0, None, is_master=True, timeout=TIMEOUT, wait_for_workers=False
    )
    context = mp.start_processes(
        _worker,
        args=(store.port, out_dir),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=5.0):
            if time.monotonic() > deadline:
                alive = [i for i, p in enumerate(context.processes) if p.is_alive()]
                pytest.fail(f"DDP ranks {alive} still running after {DEADLINE_S:.0f} s")
    except mp.ProcessException as err:  # a rank raised, or died on a signal
        pytest.fail(f"a DDP worker failed: {err}")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
                p.join(10.0)
        del store


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(
    not dist.is_gloo_available() or sys.platform == "win32",
    reason="needs the gloo backend and a TCP store (not on Windows)",
)
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    _run_workers(str(tmp_path))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # gradients were all-reduced

    reference = _model()
    start = {k: v.clone() for k, v in adapter_state_dict(reference).items()}
    _train(reference, slice(0, 4))  # one process, the whole batch: the same mean gradient
    expected = adapter_state_dict(reference)
    assert expected.keys() == ranks[0].keys()
    moved = [
        k
        for k in expected
        if k.endswith(("psi", "gate")) and not torch.equal(start[k], expected[k])
    ]
    assert len(moved) == 8  # every gate and every Ψ of the 4 adapters trained
    for k, v in expected.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-4, atol=1e-6)
