"""Device choice: one GPU per concurrent process via lock files (GPUs faked on CPU machines)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lipbench import devices


def test_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is available"):
        devices.resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")


def test_concurrent_processes_take_different_gpus_and_fall_back_to_free_memory(tmp_path, monkeypatch):
    """A second process holding GPU 0's lock makes this process pick GPU 1; with both held,
    the GPU with the most free memory is chosen."""
    monkeypatch.setenv("LIPBENCH_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: ((5, 10), (8, 10))[index])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; h = open(sys.argv[1], 'w'); fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True);"
            " time.sleep(30)",
            str(tmp_path / "lipbench-gpu-0.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(devices, "_HELD_LOCKS", {})
        assert devices.resolve_device("auto") == torch.device("cuda:1")
        assert devices.resolve_device("auto") == torch.device("cuda:1"), "a process keeps its GPU"
        held = devices._HELD_LOCKS.pop(1)  # as if this were a third process: both GPUs are taken
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: ((9, 10), (1, 10))[index])
        assert devices.pick_cuda_device() == torch.device("cuda:0")
        held.close()
    finally:
        holder.kill()
        holder.wait()
        for handle in devices._HELD_LOCKS.values():
            handle.close()


def test_torchrun_ranks_use_their_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.resolve_device("auto") == torch.device("cuda:3")
