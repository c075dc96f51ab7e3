"""--device: cpu or cuda, one reading for bench-hw, run and toy."""

import subprocess
import sys

import pytest
import torch

from expertcache.devices import torch_device
from expertcache.errors import ExpertcacheError


def test_cpu_in_any_spelling_is_the_cpu():
    assert torch_device("cpu") == torch_device("cpu:0") == torch.device("cpu")


@pytest.mark.parametrize("name", ["meta", "xpu", "mps", "tpu", "bogus", "", "cuda:x"])
def test_other_devices_are_one_line_errors(name):
    with pytest.raises(ExpertcacheError, match=f"unknown device {name!r}; choose cpu or cuda"):
        torch_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error():
    with pytest.raises(ExpertcacheError, match="needs a CUDA build of torch and a GPU"):
        torch_device("cuda:1")


@pytest.mark.parametrize("name", ["cpu:0", "meta", "xpu"])  # were tracebacks from torch
def test_bench_hw_refuses_or_takes_a_device_in_one_line(name, tmp_path):
    p = subprocess.run([sys.executable, "-c", "from expertcache.cli import main; main()", "bench-hw", "--device", name,
                        "--hidden", "64", "--intermediate", "32", "--layers", "2", "--disk-mib", "4", "--copy-mib", "8",
                        "--directory", str(tmp_path), "--json"], capture_output=True, text=True)
    if name == "cpu:0":
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2
        assert p.stderr == f"error: unknown device {name!r}; choose cpu or cuda (cuda:N for one GPU of several)\n"
