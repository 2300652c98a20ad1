"""How many bytes a model's frozen base and its method weights take: pure arithmetic over the
backbone's shape, no torch (the QLoRA memory table, study 004).

The base is the ``BertModel`` without its pooler (``BackboneShape.backbone_params``). As loaded it
is fp32; with ``quantize="nf4"`` the weight matrices of the encoder's linears (query, key, value,
attention output, intermediate, output: ``trainables/quantize.py``) are held as bitsandbytes
NF4 with double quantisation, as QLoRA does (Dettmers et al. 2023, arXiv 2305.14314, sec. 3):

* the weights, two 4-bit codes per byte: ``n / 2`` bytes;
* one absmax per block of 64 weights, itself quantised to 8 bits: ``ceil(n / 64)`` bytes;
* one fp32 absmax per block of 256 of those, and one fp32 offset: ``4 * ceil(blocks / 256) + 4``.

That is 4.127 bits a weight where the paper counts 4 + 8/64 + 32/(64 * 256). The two lookup tables
(16 NF4 values, 256 values of the second level's code) are fixed constants shared in spirit by
every layer and are left out. Biases, LayerNorms and embeddings stay fp32: bitsandbytes quantises
matrices of linears, not embeddings (on MiniLM the embeddings are half the model, so the base
shrinks far less than 8x). The method weights (head, adapters: ``added_params``) are trained and
saved in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces.errors import one_of
from search_spaces.method_config import QUANTIZE
from search_spaces.shapes import BackboneShape

MIB = 2**20
FP32_BYTES = 4
BF16_BYTES = 2
NF4_BLOCK = 64  # weights per first-level absmax (bitsandbytes' default blocksize for 4 bits)
NF4_NESTED_BLOCK = 256  # first-level absmaxes per second-level fp32 absmax (double quantisation)


def linear_weight_sizes(shape: BackboneShape) -> tuple[int, ...]:
    """Element counts of the weight matrices ``quantize`` packs: six linears per encoder layer."""
    d, i = shape.hidden, shape.intermediate
    return (d * d, d * d, d * d, d * d, d * i, i * d) * shape.num_layers


def nf4_bytes(n: int) -> int:
    """Bytes of one weight matrix of ``n`` elements in NF4 with double quantisation."""
    blocks = -(-n // NF4_BLOCK)
    nested = -(-blocks // NF4_NESTED_BLOCK)
    return -(-n // 2) + blocks + FP32_BYTES * nested + FP32_BYTES


@dataclass(frozen=True)
class MemoryFigures:
    """Bytes of a model's frozen base (as run, and as fp32 / bf16 for reference) and of its
    method weights; ``*_mib`` in MiB (2**20 bytes), the unit of ``peak_mem_mib``."""

    quantize: str
    base_bytes: int
    base_fp32_bytes: int
    base_bf16_bytes: int
    adapter_bytes: int

    @property
    def base_mib(self) -> float:
        return self.base_bytes / MIB

    @property
    def adapter_mib(self) -> float:
        return self.adapter_bytes / MIB

    @property
    def base_fp32_mib(self) -> float:
        return self.base_fp32_bytes / MIB

    @property
    def base_bf16_mib(self) -> float:
        return self.base_bf16_bytes / MIB


def base_bytes(shape: BackboneShape, quantize: str) -> int:
    """Bytes of the frozen base as it is held: fp32, or with its linears' weights in NF4."""
    if quantize not in QUANTIZE:
        raise one_of("quantize", quantize, QUANTIZE)
    total = shape.backbone_params * FP32_BYTES
    if quantize == "none":
        return total
    sizes = linear_weight_sizes(shape)
    return total - sum(sizes) * FP32_BYTES + sum(nf4_bytes(n) for n in sizes)


def memory_figures(shape: BackboneShape, quantize: str, added_params: int) -> MemoryFigures:
    """The base and method-weight bytes of a model whose method adds ``added_params`` (the
    accounting's figure: head, adapters, frozen sources)."""
    return MemoryFigures(
        quantize=quantize,
        base_bytes=base_bytes(shape, quantize),
        base_fp32_bytes=shape.backbone_params * FP32_BYTES,
        base_bf16_bytes=shape.backbone_params * BF16_BYTES,
        adapter_bytes=added_params * FP32_BYTES,
    )


__all__ = ["MemoryFigures", "base_bytes", "linear_weight_sizes", "memory_figures", "nf4_bytes"]
