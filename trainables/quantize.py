"""QLoRA's frozen base: the backbone's encoder linears in 4-bit NF4 (Dettmers et al. 2023,
arXiv 2305.14314), through bitsandbytes.

``quantize_linears(bert, "nf4")`` swaps each ``nn.Linear`` of the encoder layers (query, key,
value, attention output, intermediate, output) for a ``bitsandbytes.nn.Linear4bit`` (NF4, double
quantisation, bf16 compute) holding the same weights; bitsandbytes packs them when the model
moves to its device (``model.to("cuda")``), keeping each parameter object, so the ids the method
builder recorded stay valid. Embeddings, LayerNorms, the pooler and the classification head are
never touched: a 4-bit head cannot train (its weights take no gradient) and, trained around, a
frozen quantised head predicts one class (the known trap of loading a whole classifier with
``BitsAndBytesConfig``). peft then wraps the 4-bit linears with its own bitsandbytes LoRA and
AdaLoRA layers (``is_loaded_in_4bit``), whose adapters are fp32.

bitsandbytes is imported only here and only for a quantised model: it is an optional extra
(``pip install '.[qlora]'``, 43 MB, a CUDA library), so every other path, the refusal included,
works without it. bitsandbytes 4-bit is refused without CUDA (:func:`require_cuda`), before any
data or model is loaded: the studies here time and size QLoRA on a GPU, where its kernels are.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from search_spaces.errors import ConfigError
from search_spaces.method_config import QUANTIZE

COMPUTE_DTYPE = torch.bfloat16  # QLoRA's compute type: the 4-bit weights are dequantised to it
# the linears of a transformers BertLayer that hold the frozen weights (the six placement modules)
QUANTIZED_PATHS = ("attention.self.query", "attention.self.key", "attention.self.value",
                   "attention.output.dense", "intermediate.dense", "output.dense")  # fmt: skip
INSTALL = "pip install '.[qlora]' (bitsandbytes)"


def cuda_available() -> bool:
    """Whether this process sees a CUDA device (the one fact the refusal reads)."""
    return torch.cuda.is_available()


def require_cuda(quantize: str, *, where: str = "this host") -> None:
    """Refuse a quantised configuration where no CUDA device is: one line naming the value."""
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize={quantize!r} is not one of: {', '.join(QUANTIZE)}")
    if quantize == "none" or cuda_available():
        return
    raise ConfigError(
        f"quantize={quantize!r} loads the frozen backbone in 4 bits with bitsandbytes, which needs "
        f"a CUDA GPU; {where} has none: run it on a GPU host (or with quantize=none)"
    )


def _bnb():
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f"quantize='nf4' needs bitsandbytes: {INSTALL}") from None
    return bitsandbytes


def quantized_linears(bert: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every linear :func:`quantize_linears` swaps, in layer order."""
    for index, layer in enumerate(bert.encoder.layer):
        for path in QUANTIZED_PATHS:
            yield f"encoder.layer.{index}.{path}", layer.get_submodule(path)


def quantize_linears(bert: nn.Module, quantize: str) -> int:
    """Swap the encoder layers' linears of ``bert`` for 4-bit ones (in place); returns how many.

    The weights are packed when the model moves to its device. ``quantize="none"``: no-op.
    """
    if quantize == "none":
        return 0
    bnb = _bnb()
    swapped = 0
    for name, linear in list(quantized_linears(bert)):
        parent_name, _, child = name.rpartition(".")
        four_bit = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            compute_dtype=COMPUTE_DTYPE, compress_statistics=True, quant_type="nf4",
            device=linear.weight.device,
        )  # fmt: skip
        four_bit.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if linear.bias is not None:
            four_bit.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        bert.get_submodule(parent_name).register_module(child, four_bit)
        swapped += 1
    bert.is_loaded_in_4bit = True  # what peft reads to wrap Linear4bit with its 4-bit LoRA layers
    return swapped


def quantize_backbone(bert: nn.Module, quantize: str) -> int:
    """The trainable's entry: refuse without CUDA, then :func:`quantize_linears`."""
    require_cuda(quantize, where="this host")
    return quantize_linears(bert, quantize)


def logical_numel(param: torch.Tensor) -> int:
    """Elements of a parameter as the model uses it: a packed 4-bit weight counts its original
    shape (two codes share a byte), never its storage."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(param, "bnb_quantized", True):
        return int(torch.Size(state.shape).numel())
    return param.numel()


def stored_bytes(param: torch.Tensor) -> int:
    """Bytes a parameter holds on its device: a packed 4-bit weight with its absmax (quantised)
    and second-level absmax and offset (the lookup tables, constants, left out as in
    :func:`search_spaces.memory.nf4_bytes`); a 4-bit weight not yet packed as it will be."""
    state = getattr(param, "quant_state", None)
    if state is None:
        if getattr(param, "quant_type", None) is not None:  # a Params4bit before packing
            from search_spaces.memory import nf4_bytes

            return nf4_bytes(param.numel())
        return param.numel() * param.element_size()
    total = param.numel() * param.element_size() + _bytes(state.absmax)
    nested = getattr(state, "state2", None)
    if nested is not None:
        total += _bytes(nested.absmax) + _bytes(getattr(state, "offset", None))
    return total


def _bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


__all__ = ["COMPUTE_DTYPE", "QUANTIZED_PATHS", "cuda_available", "logical_numel",
           "quantize_backbone", "quantize_linears", "quantized_linears", "require_cuda",
           "stored_bytes"]  # fmt: skip
