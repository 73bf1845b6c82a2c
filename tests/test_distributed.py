"""Two CPU processes under torchrun (gloo): each selects from its own pool."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(tmp_path, *worker_args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(tmp_path), *worker_args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_torchrun_selects_per_process(tmp_path):
    ranks = _torchrun(tmp_path)
    pools = []
    for result in ranks:
        assert result["world_size"] == 2 and result["global_step"] == 3
        calls = result["calls"]
        assert [c["scoring"] for c in calls] == [True, False] * 3
        for scoring, training in zip(calls[0::2], calls[1::2]):
            assert len(scoring["rows"]) == 12 and len(training["rows"]) == 4
            assert all(row in scoring["rows"] for row in training["rows"])
        pools.append({tuple(row) for c in calls[0::2] for row in c["rows"]})
        logs = [h for h in result["logs"] if "loss" in h]
        assert len(logs) == 3 and all("mms_pool_mean" in h and "mmr_penalty" in h for h in logs)
    assert not pools[0] & pools[1], "the two processes must draw disjoint pools"
    # metrics are gathered: both processes log the same values
    assert [h["mms_pool_mean"] for h in ranks[0]["logs"] if "loss" in h] == [
        h["mms_pool_mean"] for h in ranks[1]["logs"] if "loss" in h
    ]


@pytest.mark.slow
def test_two_process_cached_selection_shares_one_cache(tmp_path):
    ranks = _torchrun(tmp_path, "mms_cached")
    assert [r["global_step"] for r in ranks] == [14, 14]
    assert ranks[0]["margins"] == ranks[1]["margins"]  # every process stores every process's margins
    assert not any(math.isnan(m) for m in ranks[0]["margins"])  # 12 steps of 2 x 4 scored all 96 samples


@pytest.mark.slow
def test_two_process_pruning_plans_the_same_passes(tmp_path):
    ranks = _torchrun(tmp_path, "pruning")
    assert ranks[0]["margins"] == ranks[1]["margins"]  # the same scores, so the same plans
    lengths = ranks[0]["lengths"]
    assert lengths[0] == lengths[-1] == 96 and all(n < 96 and n % 8 == 0 for n in lengths[1:-1])
    for result in ranks:
        assert result["lengths"] == lengths  # the same plans on every process
        assert result["global_step"] == result["max_steps"] == sum(lengths) // 8  # batch 4 x 2 processes
    first_pass = [tuple(r) for rank in ranks for batch in rank["rows"][:12] for r in batch]
    assert len(first_pass) == 96 and len(set(first_pass)) == len({tuple(r) for r in first_pass})
    # each step the processes train on different halves of one planned batch
    for a, b in zip(ranks[0]["rows"], ranks[1]["rows"]):
        assert not {tuple(r) for r in a} & {tuple(r) for r in b} or a == b


@pytest.mark.slow
def test_two_process_ranking_gathers_every_sample_once_in_dataset_order(tmp_path):
    ranks = _torchrun(tmp_path, "rank")
    assert [r["world_size"] for r in ranks] == [2, 2]
    for result in ranks:
        assert len(result["scores"]) == 23  # not 24: the padding sample of the short last batch is dropped
        assert result["scores"] == pytest.approx(result["reference"], abs=1e-5)
        assert sorted(result["indices"]) == list(range(23))
    assert ranks[0]["scores"] == ranks[1]["scores"] and ranks[0]["indices"] == ranks[1]["indices"]
