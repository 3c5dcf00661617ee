"""Engine settings derived without starting vLLM: the CPU count of a VLLM_CPU_OMP_THREADS_BIND list."""

import pytest

from synalign_ray.generation.engine import cpu_count_in_bind


@pytest.mark.parametrize("bind, count", [("0-1", 2), ("0", 1), ("0,2,4-7", 6), ("3-5", 3),
                                         ("all", None), ("nobind", None), ("0-1|2-3", None), ("", None)])
def test_cpu_count_in_bind(bind, count):
    assert cpu_count_in_bind(bind) == count
