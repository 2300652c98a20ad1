"""Model FLOPs of training a BERT-style encoder, and the MFU they give: pure arithmetic over
:class:`BackboneShape` and token counts, no torch at import.

Conventions (those of the PaLM paper's MFU, adapted to a frozen backbone):

* A matmul of ``m x k`` by ``k x n`` costs ``2 m k n`` FLOPs. Per token and layer the forward
  pass runs the four attention projections and the two FFN linears, ``2 (4 d^2 + 2 d i)``, and
  the two attention products ``Q K^T`` and ``A V``, ``2 * 2 * T * d`` for a sequence of ``T``
  tokens. Embedding lookups, LayerNorms, softmax and the small head are left out.
* The backward pass costs twice the forward for a trained matmul (gradients of the input and of
  the weight), once the forward for a frozen one (the input's gradient only): PEFT trains few
  weights but still back-propagates through every layer above the lowest adapted one.
* Only real tokens count (``tokens_seen``), not padding: MFU measures useful work.
"""

from __future__ import annotations

from search_spaces.shapes import BackboneShape

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets, by a substring of
# ``torch.cuda.get_device_name()``; the first match wins, so longer names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),  # SXM5 / HBM3
    ("H200", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def forward_flops_per_token(shape: BackboneShape, *, seq_len: float) -> float:
    """Forward FLOPs of one token in a sequence of ``seq_len`` tokens (all layers)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be > 0")
    d, i = shape.hidden, shape.intermediate
    linears = 2 * (4 * d * d + 2 * d * i)
    attention = 2 * 2 * seq_len * d
    return shape.num_layers * (linears + attention)


def train_flops(
    shape: BackboneShape, *, tokens: int, samples: int, frozen_backbone: bool = True
) -> float:
    """Model FLOPs of training on ``tokens`` real tokens in ``samples`` sequences.

    ``frozen_backbone``: the backbone's linears get no weight gradient (every PEFT method);
    False for full fine-tuning. The attention length is the mean real length, tokens / samples.
    """
    if tokens < 0 or samples < 0:
        raise ValueError(f"tokens={tokens} and samples={samples} must be >= 0")
    if tokens == 0 or samples == 0:
        return 0.0
    seq_len = tokens / samples
    d, i = shape.hidden, shape.intermediate
    linears = shape.num_layers * 2 * (4 * d * d + 2 * d * i)
    attention = shape.num_layers * 2 * 2 * seq_len * d  # no weights: its backward is always 2x
    linear_factor = 2 if frozen_backbone else 3  # forward + input grad (+ weight grad)
    return tokens * (linear_factor * linears + 3 * attention)


def mfu(
    shape: BackboneShape,
    *,
    tokens: int,
    samples: int,
    seconds: float,
    peak_flops: float | None,
    frozen_backbone: bool = True,
) -> float | None:
    """Model FLOPs utilisation: :func:`train_flops` per second over ``peak_flops``.

    None when the peak is unknown (CPU, an unlisted GPU) or no time was measured.
    """
    if peak_flops is None or peak_flops <= 0 or seconds <= 0:
        return None
    flops = train_flops(shape, tokens=tokens, samples=samples, frozen_backbone=frozen_backbone)
    return flops / seconds / peak_flops


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (``torch.cuda.get_device_name()``)."""
    if not device_name:
        return None
    for key, peak in PEAK_BF16_FLOPS:
        if key in device_name:
            return peak
    return None


def device_peak_flops(device: str) -> float | None:
    """:func:`peak_bf16_flops` of a torch device string (``"cuda"``, ``"cuda:1"``, ``"cpu"``)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return peak_bf16_flops(torch.cuda.get_device_name(torch.device(device)))


def trial_mfu(model: object, report: object, device: str) -> float | None:
    """MFU of the training so far of ``model`` (a ``PeftClassifier``), from a loop ``EvalReport``."""
    shape: BackboneShape = model.shape  # type: ignore[attr-defined]
    frozen = model.trainable_params() < model.backbone_params()  # type: ignore[attr-defined]
    return mfu(
        shape,
        tokens=report.tokens_seen,  # type: ignore[attr-defined]
        samples=report.samples_seen,  # type: ignore[attr-defined]
        seconds=report.train_s,  # type: ignore[attr-defined]
        peak_flops=device_peak_flops(device),
        frozen_backbone=frozen,
    )


__all__ = [
    "PEAK_BF16_FLOPS", "device_peak_flops", "forward_flops_per_token", "mfu", "peak_bf16_flops",
    "train_flops", "trial_mfu",
]  # fmt: skip
