"""tuner.bench.profile: where a step's time goes, from the profiler's per-op totals (the real
profiler runs in tests/test_bench.py's fused packing level)."""

from __future__ import annotations

import pytest

from tuner.bench.profile import OpTime, kind_of, profile_line, summarize, with_step_time


@pytest.mark.parametrize(
    ("name", "kind"),
    [("aten::mm", "matmul"), ("aten::bmm", "matmul"), ("aten::native_layer_norm", "norm"),
     ("aten::native_layer_norm_backward", "norm"), ("aten::_softmax", "attention"),
     ("aten::_scaled_dot_product_efficient_attention", "attention"), ("aten::sum", "reduction"),
     ("aten::linalg_vector_norm", "reduction"), ("aten::copy_", "copy"),
     ("aten::index_select", "copy"), ("Memcpy HtoD (Pageable -> Device)", "copy"),
     ("aten::gelu", "element-wise"), ("aten::add_", "element-wise")],
)  # fmt: skip
def test_ops_are_grouped_by_kind(name, kind):
    assert kind_of(name) == kind


def test_on_a_device_the_kernels_total_and_what_no_op_claims_is_its_own_kind():
    ops = [OpTime("aten::mm", host_us=50, device_us=600), OpTime("aten::gelu", 30, 200),
           OpTime("aten::add_", 10, 0),  # launches nothing on the device
           OpTime("sm90_gemm_kernel", 0, 600, kernel=True),
           OpTime("vectorized_elementwise_kernel", 0, 400, kernel=True)]  # fmt: skip
    out = summarize(ops, 2, device=True)
    assert (out["clock"], out["ms_per_step"]) == ("device", 0.5)  # 1000 us over 2 steps
    assert out["shares"] == {"matmul": 0.6, "element-wise": 0.2, "no op": 0.2}
    assert list(out["top_ms_per_step"]) == ["aten::mm", "aten::gelu"]  # kernels are not ops


def test_on_the_host_each_ops_own_time_counts():
    ops = [OpTime("aten::mm", 300, 0), OpTime("aten::gelu", 100, 0)]
    out = summarize(ops, 4, device=False)
    assert (out["clock"], out["ms_per_step"]) == ("host", 0.1)
    assert out["shares"] == {"matmul": 0.75, "element-wise": 0.25}
    assert out["top_ms_per_step"] == {"aten::mm": 0.075, "aten::gelu": 0.025}
    with pytest.raises(ValueError, match="steps=0"):
        summarize(ops, 0, device=False)


def test_the_line_puts_the_timed_step_beside_the_eager_one():
    ops = [OpTime("aten::mm", 0, 3000), OpTime("k", 0, 3000, kernel=True)]
    out = with_step_time(summarize(ops, 1, device=True), 2.5)
    assert profile_line(out) == ("3.00 ms of device time per eager step (matmul 100%); "
                                 "the timed step 2.50 ms")  # fmt: skip
