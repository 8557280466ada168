"""SNNK adapters under DistributedDataParallel: gloo backend, 2 CPU processes (issue #5)."""

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


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ddp = DistributedDataParallel(_model())
        half = 4 // WORLD
        _train(ddp, slice(rank * half, (rank + 1) * half))
        state = {k: v.clone().contiguous() for k, v in adapter_state_dict(ddp).items()}
        save_file(state, f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD)
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
