"""Data-parallel training under torchrun, on the CPU with 2 gloo processes.

Three launches of `python -m torch.distributed.run --nproc-per-node 2 -m cca_codec.training.train`:
a run stopped by SIGTERM sent to rank 1 alone (both ranks stop at one step, S, and rank 0 writes
the state), its resumption to S + 2 steps, and a straight run of S + 2 steps. Against them: one
process with the same global batch (losses match within float tolerance), the resumed run against
the straight one (bit for bit), and the 2-rank state resumed by one process (a different N).
The schedule is constant after warm-up, so the learning rate does not depend on --steps.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_photos

from cca_codec.base.errors import UsageError
from cca_codec.core.checkpoint import load_model
from cca_codec.training.data import build_pack
from cca_codec.training.distributed import World
from cca_codec.training.train import TrainOptions, run

REPO = Path(__file__).resolve().parents[1]
BATCH = 4
COMMON = dict(config="cca-tiny", batch=BATCH, crop=64, warmup=2, schedule="constant", lr=1e-3, ema=0.9, log_every=1,
              save_every=1000, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    src = write_photos(tmp_path_factory.mktemp("photos"), 6, (200, 300), seed=1, scale=40.0)
    out = tmp_path_factory.mktemp("pack")
    build_pack(src, out, crop=96, val_fraction=0.2)
    return out


def cli_args(pack, out, steps, **extra):
    opts = dict(COMMON, data=str(pack), out=str(out), steps=steps, **extra)
    return [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]


def torchrun(pack, out, steps, **extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "cca_codec.training.train"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd + cli_args(pack, out, steps, **extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=120):
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    return output


def worker_of_rank(launcher_pid: int, rank: int) -> int:
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def log_of(directory):
    return [json.loads(line) for line in (Path(directory) / "log.jsonl").read_text().splitlines()]


def load_state(directory):
    return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def runs(pack, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # 1. two ranks, SIGTERM to rank 1 only once step 1 is logged
    proc = torchrun(pack, root / "interrupted", steps=1000)
    log_file = root / "interrupted" / "log.jsonl"
    deadline = time.time() + 90
    while not (log_file.exists() and log_file.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, "the 2-rank run did not start"
        time.sleep(0.05)
    os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)
    finish(proc)
    stopped = load_state(root / "interrupted")["step"]
    total = stopped + 2
    state = root / "interrupted" / "state.pt"
    # 2. resumed by two ranks; 3. straight; both to `total` steps
    finish(torchrun(pack, root / "resumed", steps=total, resume=state))
    finish(torchrun(pack, root / "straight", steps=total, export=root / "export", export_id="ddp"))
    # one process with the same global batch; and the 2-rank state resumed by one process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank has: the tiny network gains nothing from 2 threads
    try:
        single = run(TrainOptions(**COMMON, data=str(pack), out=str(root / "single"), steps=total))
        resumed_n1 = run(TrainOptions(**COMMON, data=str(pack), out=str(root / "n1"), steps=total, resume=str(state)))
    finally:
        torch.set_num_threads(threads)
    return dict(root=root, stopped=stopped, total=total, single=single, resumed_n1=resumed_n1)


def test_sigterm_to_one_rank_stops_both_at_one_step(runs):
    """Rank 1 alone got SIGTERM; both ranks left the loop at the same step (else the launch would
    hang or fail in a collective), long before --steps, and rank 0 saved that step."""
    root, stopped = runs["root"], runs["stopped"]
    assert 1 <= stopped < 1000
    log = log_of(root / "interrupted")
    assert [r["step"] for r in log] == list(range(1, stopped + 1))
    state = load_state(root / "interrupted")
    assert state["world_size"] == 2 and state["options"]["batch"] == BATCH
    assert state["device"] == "2 x cpu"


def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    two, one = log_of(runs["root"] / "straight"), log_of(runs["root"] / "single")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, runs["total"] + 1))
    for a, b in zip(two, one):
        for key in ("loss", "bpp", "cca", "aux2", "aux_bits_per_element", "quantile_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])
        assert a["checkerboard"] == b["checkerboard"]
    assert two[0]["loss"] == one[0]["loss"]  # the first step's forward pass sees the same numbers
    weights_two, weights_one = load_state(runs["root"] / "straight")["net"], runs["single"].net.state_dict()
    for k, v in weights_one.items():
        torch.testing.assert_close(weights_two[k], v, rtol=1e-3, atol=1e-4, msg=k)


def test_rank_0_exports_the_model(runs):
    model = load_model(runs["root"] / "export")
    assert model.model_id == "ddp" and model.info["steps"] == runs["total"] and model.info["device"] == "2 x cpu"
    assert model.info["batch"] == BATCH


def test_resumed_two_rank_run_is_bit_exact(runs):
    straight, resumed = load_state(runs["root"] / "straight"), load_state(runs["root"] / "resumed")
    assert straight["step"] == resumed["step"] == runs["total"]
    for part in ("net", "aux", "ema"):
        assert straight[part].keys() == resumed[part].keys()
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
    for part in ("gen", "torch_rng"):
        assert torch.equal(straight[part], resumed[part]), part
    assert [r["loss"] for r in log_of(runs["root"] / "resumed")] == [r["loss"] for r in log_of(runs["root"] / "straight")][runs["stopped"] :]


def test_two_rank_state_resumes_in_one_process(runs):
    """A different N draws the same batches: one process continues the 2-rank run as the 2-rank
    run itself did, within float tolerance."""
    resumed = runs["resumed_n1"]
    assert resumed.step == runs["total"]
    straight = log_of(runs["root"] / "straight")[runs["stopped"] :]
    n1 = log_of(runs["root"] / "n1")
    assert [r["step"] for r in n1] == [r["step"] for r in straight]
    for a, b in zip(n1, straight):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_global_noise_blocks_are_the_rows_one_process_draws():
    """Each rank's block of the global-batch noise holds the values one process draws for those rows,
    for the layouts the entropy models see: NCHW, channels-last, channel slices of either, and the
    EntropyBottleneck's (C, 1, B*h*w); local batches of 1 and 2."""
    cases = []
    for b in (1, 2):
        x = torch.zeros(2 * b, 6, 3, 5)
        cases += [(x, 0), (x.contiguous(memory_format=torch.channels_last), 0), (x[:, 2:5], 0)]
        cases += [(x.contiguous(memory_format=torch.channels_last)[:, 1:4], 0), (torch.zeros(6, 1, 2 * b * 15), -1)]
        cases += [(torch.zeros(2 * b, 6, 1, 1).contiguous(memory_format=torch.channels_last), 0)]
    for full_input, dim in cases:
        torch.manual_seed(3)
        one = torch.empty_like(full_input).uniform_(-0.5, 0.5)  # what compressai draws in one process
        blocks = []
        for rank, local in enumerate(full_input.chunk(2, dim)):
            torch.manual_seed(3)
            blocks.append(World(torch.device("cpu"), rank, 2).global_uniform(local, dim))
        assert torch.equal(torch.cat(blocks, dim), one), (full_input.shape, full_input.stride(), dim)


def test_the_global_batch_must_divide_by_the_ranks():
    assert World(torch.device("cpu"), 1, 2).shard(6) == slice(3, 6)
    with pytest.raises(UsageError, match="global batch"):
        World(torch.device("cpu"), 0, 3).shard(4)
