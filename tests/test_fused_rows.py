"""Fused rows of every row method (trainables/fused/rows.py): K trials of BitFit, bottleneck
adapters, prefix tuning, AdapterFusion and LoRA+AdapterFusion trained as one model get what each
gets alone.

As tests/test_fused.py: dropout off, the trials differ in seed, learning rate, weight decay and
clipping, and in the sizes that pad (search_spaces/row_groups.py); the reference is the loop
(``trainables.training.loop.fit``) on each trial alone, weight by weight on CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load
from torch.utils._python_dispatch import TorchDispatchMode

from search_spaces.errors import ConfigError
from search_spaces.method_config import MethodConfig
from search_spaces.row_groups import RowLimits, count_groups, group_template, row_signature
from tests.test_fused import BASE, no_dropout, trainable
from tests.test_fused_pool import BASE as POOL_BASE
from tests.test_fused_pool import DATA as POOL_DATA
from tests.test_fused_pool import alone, poll_to_end
from tests.test_fused_pool import build as pool_build
from tests.test_loop import DEV, TRAIN
from trainables.backbones import load_backbone
from trainables.fused import FusedRows, fit_fused
from trainables.fused_pool import WEIGHTS_KEY, FusedPool
from trainables.methods import build_model, save_source_adapter
from trainables.prepared import train_rows
from trainables.training.loop import fit

SOURCES = ("glue/sst2", "imdb")
# each row its own rate, decay, clipping and head rate (the head's own AdamW group alone; the
# default head rate, 10x, on the row of the lowest rate: at 3e-2 a Pfeiffer unit near its ReLU
# kink turns rounding into drift beyond assert_same_weights' bound, alone as fused; the last
# row's 1.5e-2 capped at 1.2e-2 by head_lr_max)
CONFIGS = [BASE.replace(head_lr_scale=1.0), BASE.replace(lr=1e-3, seed=5, weight_decay=0.1),
           BASE.replace(lr=5e-3, seed=9, grad_clip=0.0, head_lr_scale=3.0,
                        head_lr_max=1.2e-2)]  # fmt: skip
# per method: three trials of one row signature, of other sizes where the method pads
CASES = {
    "bitfit": [{}, {}, {}],
    "pfeiffer": [{"bottleneck": 8}, {"bottleneck": 4}, {"bottleneck": 6}],
    "houlsby": [{"bottleneck": 8, "layers": (1,)}, {"bottleneck": 2, "layers": (1,)},
                {"bottleneck": 5, "layers": (1,)}],
    "fusion-static": [{"fusion": "static", "target_bottleneck": 8},
                      {"fusion": "static", "target_bottleneck": 4},
                      {"fusion": "static", "target_bottleneck": 6}],
    "fusion-dynamic": [{"fusion": "dynamic", "fusion_layers": (1,)}] * 3,
    # static and dynamic fusion in one group, over other layers: a dynamic template whose value
    # matrices are the identity, fixed, where a row has none (static, or outside its layers)
    "fusion-types": [{"fusion": "dynamic", "fusion_layers": (1,)},
                     {"fusion": "static", "target_bottleneck": 4},
                     {"fusion": "dynamic", "fusion_layers": (0,), "sources": ("imdb",)}],
    "lora_fusion-types": [{"fusion": "static", "rank": 4, "alpha": 8},
                          {"fusion": "dynamic", "rank": 2, "alpha": 8, "fusion_layers": (1,)},
                          {"fusion": "dynamic", "rank": 3, "alpha": 3, "placement": "ffn"}],
    "lora_fusion": [{"fusion": "static", "rank": 4, "alpha": 8},
                    {"fusion": "static", "rank": 2, "alpha": 8, "layers": (0,)},
                    {"fusion": "static", "rank": 3, "alpha": 3, "layer_ranks": (0, 3)}],
    # LoRA on other linears: the template's on the query/value and FFN linears, zero where a trial
    # has none
    "lora_fusion-placement": [{"fusion": "static", "rank": 4, "alpha": 8},
                              {"fusion": "static", "rank": 2, "alpha": 8, "placement": "ffn"},
                              {"fusion": "static", "rank": 3, "alpha": 3, "placement": "ffn",
                               "layers": (1,)}],
    "lora_fusion-target": [{"rank": 4, "target_bottleneck": 6, "fusion_layers": (0,)},
                           {"rank": 8, "target_bottleneck": 8, "fusion_layers": (0,)},
                           {"rank": 2, "target_bottleneck": 2, "fusion_layers": (0,)}],
    # the union of the sources: a row's attention gives the sources it lacks weight 0, and its
    # uniform layers (layer 0 here) average its own; another order of the same sources too
    "fusion-union": [{"fusion": "static", "fusion_layers": (1,), "sources": ("glue/sst2",)},
                     {"fusion": "static", "fusion_layers": (1,), "sources": ("imdb",)},
                     {"fusion": "static", "fusion_layers": (1,), "sources": ("imdb", "glue/sst2")}],
    "lora_fusion-union": [{"rank": 4, "sources": ("imdb",), "target_bottleneck": 4},
                          {"rank": 2, "sources": SOURCES, "target_bottleneck": 8},
                          {"rank": 8, "sources": ("glue/sst2",), "target_bottleneck": 2}],
    # static fusion over other layers (zero query and key: uniform, as the trial's own layer) and
    # with or without a target adapter (weight 0 where the trial has none)
    "fusion-layers-target": [
        {"fusion": "static", "fusion_layers": (1,)},
        {"fusion": "static", "fusion_layers": (0,), "target_bottleneck": 4, "sources": ("imdb",)},
        {"fusion": "static", "target_bottleneck": 8}],
    "lora_fusion-target-presence": [{"rank": 4}, {"rank": 2, "target_bottleneck": 6},
                           {"rank": 8, "sources": ("glue/sst2",)}],
    # nothing pads: one length and parametrisation per group (adapters makes the prefix's
    # positions and mask on the host in its forward; the member's forward runs as alone)
    "prefix-flat": [{"prefix_length": 4, "prefix_reparam": False}] * 3,
    "prefix-reparam": [{"prefix_length": 3, "prefix_reparam": True, "layers": (1,)}] * 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Two frozen Pfeiffer source adapters (bottleneck 8) of the tests' random tiny backbone."""
    folder = tmp_path_factory.mktemp("sources")
    out = {}
    for i, task in enumerate(SOURCES):
        donor = member(MethodConfig(method="pfeiffer", bottleneck=8), seed=10 + i)
        with torch.no_grad():
            for param in donor.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.1 * (i + 1))
        out[task] = save_source_adapter(donor, task, folder / task.replace("/", "_"))
    return out


def member(config: MethodConfig, *, seed: int, sources=None):
    torch.manual_seed(0)  # the same random tiny backbone for every member
    backbone = load_backbone("tiny-bert")
    torch.manual_seed(seed)  # the member's own trainable initialisation
    return no_dropout(build_model(config, backbone, source_adapters=sources))


def configs_of(case: str) -> list[MethodConfig]:
    method = case.split("-")[0]
    extra = {"sources": SOURCES, "bottleneck": 8} if "fusion" in method else {}
    return [MethodConfig(method=method, **{**extra, **knobs}) for knobs in CASES[case]]


@pytest.mark.parametrize("case", list(CASES))
def test_rows_train_as_each_alone(case, sources):
    methods = configs_of(case)

    def build() -> list:
        return [member(m, seed=c.seed, sources=sources) for m, c in zip(methods, CONFIGS,
                                                                       strict=True)]  # fmt: skip

    # the references are built afresh, not deep-copied: a copy's regulariser (dynamic fusion's
    # identity pull, a closure over the built model's tensors) would still pull the original's
    alone = [(m, fit(m, TRAIN, DEV, c, task_kind="classification", metric="accuracy",
                     device="cpu")) for m, c in zip(build(), CONFIGS, strict=True)]  # fmt: skip
    models = build()
    template = member(group_template(methods), seed=0, sources=sources)
    fused = no_dropout(FusedRows(models, template=template))
    results = fit_fused(fused, TRAIN, DEV, CONFIGS, task_kind="classification",
                        metric="accuracy", device="cpu")  # fmt: skip
    for k, ((reference, ref_result), result) in enumerate(zip(alone, results, strict=True)):
        assert_same_weights(trainable(models[k]), trainable(reference))  # written back
        assert result.best_dev_score == ref_result.best_dev_score
        assert result.dev_metrics == pytest.approx(ref_result.dev_metrics, abs=1e-6)
        assert result.steps == ref_result.steps
    sums = {float(sum(v.sum() for v in trainable(m).values())) for m in models}
    assert len(sums) == 3  # the trials really differ


def assert_same_weights(ours: dict, theirs: dict) -> None:
    """test_fused.py's tolerance (2e-5 absolute, 1e-4 relative) on all but 1 % of the elements,
    and 5e-4 on those: a ReLU adapter unit near its kink turns rounding into visible drift (Adam
    normalises its tiny gradients): the same trial trained alone twice, its start scaled by
    1 + 1e-7, drifts by 1.4e-4 on one unit of its down projection."""
    assert ours.keys() == theirs.keys()
    off, total = 0, 0
    for name in ours:
        if ".adapter_fusion_layer." in name and name.endswith(".key.bias"):
            # shifts every fused adapter's score alike, which the softmax ignores: its gradient
            # is rounding noise, which Adam scales to steps of about lr, alone as fused
            continue
        torch.testing.assert_close(ours[name], theirs[name], atol=5e-4, rtol=1e-4, msg=name)
        off += int((~torch.isclose(ours[name], theirs[name], atol=2e-5, rtol=1e-4)).sum())
        total += ours[name].numel()
    assert off <= 0.01 * total, f"{off} of {total} elements beyond 2e-5"


def test_padded_entries_stay_zero(sources):
    methods = configs_of("pfeiffer")
    models = [member(m, seed=i) for i, m in enumerate(methods)]
    fused = no_dropout(FusedRows(models, template=member(group_template(methods), seed=0)))
    fit_fused(fused, TRAIN, DEV, CONFIGS, task_kind="classification", metric="accuracy",
              device="cpu")  # fmt: skip
    real = fused.scale != 0
    assert not fused.theta.detach()[~real].any()  # padding: zero after training
    assert fused.theta.detach()[real].ne(0).float().mean() > 0.5  # trained where it is real
    assert int(real[1].sum()) == models[1].trainable_params()


def test_rows_attend_without_sdpa_which_vmap_cannot_batch(monkeypatch):
    # vmap has no batching rule for SDPA (its fallback runs the rows one by one) and its CUDA
    # backward failed under vmap on an H200; the rows run eager attention, the members keep SDPA
    models = [member(m, seed=i) for i, m in enumerate(configs_of("pfeiffer"))]
    fused = FusedRows(models)
    ids, mask = torch.randint(0, 100, (3 * 4, 8)), torch.ones(3 * 4, 8, dtype=torch.long)
    expected = torch.stack([m(ids[4 * k : 4 * k + 4], mask[:4]) for k, m in enumerate(models)])

    def refuse(*args, **kwargs):
        raise AssertionError("the fused rows called scaled_dot_product_attention")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    torch.testing.assert_close(fused(ids, mask), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["fusion-dynamic", "lora_fusion"])
def test_fusion_rows_make_no_weight_per_token(case, sources):
    # vmap broadcast a row's fusion key/value weight over AdapterFusion's [B, T, adapters, H]
    # inputs, a [K, B, T, H, H] copy (10 GiB at 16 rows of MiniLM; H200: slower than one trial)
    methods = configs_of(case)
    fused = FusedRows([member(m, seed=i, sources=sources) for i, m in enumerate(methods)],
                      template=member(group_template(methods), seed=0, sources=sources))  # fmt: skip
    k, b, t, h = 3, 4, 8, fused.net.encoder.config.hidden_size
    largest = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            largest.extend(o.numel() for o in torch.utils._pytree.tree_leaves(out)
                           if isinstance(o, torch.Tensor))  # fmt: skip
            return out

    with Largest():
        ids, mask = torch.randint(5, 100, (k * b, t)), torch.ones(k * b, t, dtype=torch.long)
        fused(ids, mask).sum().backward()
    assert max(largest) < k * b * t * h * h


def test_what_cannot_be_rows_is_refused(sources):
    pfeiffer = member(MethodConfig(method="pfeiffer", bottleneck=8), seed=1)
    houlsby = member(MethodConfig(method="houlsby", bottleneck=8), seed=1)
    with pytest.raises(ConfigError, match="differs from the template's beyond the sizes"):
        FusedRows([pfeiffer, houlsby])
    wide = member(MethodConfig(method="pfeiffer", bottleneck=16), seed=1)
    with pytest.raises(ConfigError, match=r"does not fit the template's \(8, "):
        FusedRows([pfeiffer, wide])
    grow = member(MethodConfig(method="lora_grow", rank=4), seed=1)
    with pytest.raises(
        ConfigError, match="cannot be fused; fusable: bitfit, fusion, houlsby, lora"
    ):
        FusedRows([grow])
    other = member(MethodConfig(method="pfeiffer", bottleneck=8), seed=2)
    with torch.no_grad():
        other.encoder.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(ConfigError, match="frozen .*word_embeddings.* differs"):
        FusedRows([pfeiffer, other])
    # a template fuses its group's union of sources: a trial with another source does not fit
    fusion = [member(MethodConfig(method="fusion", sources=s, bottleneck=8), seed=1,
                     sources=sources) for s in (SOURCES[:1], SOURCES)]  # fmt: skip
    with pytest.raises(ConfigError, match="frozen .*src_imdb.* differs"):
        FusedRows(fusion)
    # a static template has no value matrices for a dynamic trial (a dynamic one holds a static)
    static = member(MethodConfig(method="fusion", sources=SOURCES, bottleneck=8, fusion="static"),
                     seed=1, sources=sources)  # fmt: skip
    with pytest.raises(ConfigError, match="trial 1: dynamic fusion does not fit a template of st"):
        FusedRows([static, fusion[1]])


def test_row_signatures_group_what_pads():
    pfeiffer = [MethodConfig(method="pfeiffer", bottleneck=b) for b in (8, 16)]
    assert row_signature(pfeiffer[0]) == row_signature(pfeiffer[1])
    assert group_template(pfeiffer).bottleneck == 16
    fusion = MethodConfig(method="fusion", sources=SOURCES, target_bottleneck=4)
    assert row_signature(fusion) == row_signature(fusion.replace(target_bottleneck=9))
    assert row_signature(fusion) == row_signature(fusion.replace(target_bottleneck=0))
    assert row_signature(fusion) != row_signature(fusion.replace(bottleneck=16))  # the sources'
    assert row_signature(fusion) == row_signature(fusion.replace(sources=("imdb",)))  # union
    prior = fusion.replace(
        method="lora_fusion", fusion_init="similarity", source_similarity=(0.5, 0.2)
    )
    assert row_signature(prior) != row_signature(prior.replace(sources=SOURCES[::-1]))
    assert row_signature(prior) != row_signature(prior.replace(target_bottleneck=0))
    static = fusion.replace(fusion="static", fusion_layers=(1,))
    assert row_signature(static) == row_signature(static.replace(fusion_layers=(0, 1)))
    assert row_signature(fusion) == row_signature(fusion.replace(fusion_layers=(1,)))  # dynamic
    assert row_signature(fusion) == row_signature(static)  # static: a dynamic row, value fixed
    assert group_template([static, static.replace(fusion_layers=(0,))]).fusion_layers == (0, 1)
    assert group_template([static, static.replace(fusion_layers=(0,))]).fusion == "static"
    assert group_template([static, fusion.replace(fusion_layers=(0,))]).fusion == "dynamic"
    assert row_signature(prior) != row_signature(prior.replace(fusion="static"))
    assert row_signature(prior) != row_signature(prior.replace(fusion_layers=(1,)))
    assert group_template([fusion, fusion.replace(sources=("newsgroups/bydate",))]).sources == (
        "glue/sst2", "imdb", "newsgroups/bydate")  # fmt: skip
    lora = [
        MethodConfig(method="lora", rank=r, placement=p) for r, p in ((4, "ffn"), (8, "attn_qv"))
    ]
    assert group_template(lora).placement == "attn_qv_ffn" and group_template(lora).rank == 8
    assert group_template([*lora, lora[0].replace(placement="attn_all")]).placement == "all"
    hybrid = [fusion.replace(method="lora_fusion", placement=p) for p in ("attn_qv", "ffn")]
    assert row_signature(hybrid[0]) == row_signature(hybrid[1])
    assert group_template(hybrid).placement == "attn_qv_ffn"
    assert group_template(hybrid[:1] * 2).placement == "attn_qv"
    mixed = [*pfeiffer, fusion, fusion.replace(fusion="static"), *lora]
    assert count_groups(mixed) == {"fusion": 1, "lora": 1, "pfeiffer": 1}
    assert count_groups([*mixed, prior.replace(method="fusion")]) == {
        "fusion": 2, "lora": 1, "pfeiffer": 1}  # fmt: skip
    # a prefix's length and parametrisation do not pad (a zero key takes softmax mass)
    prefix = MethodConfig(method="prefix", prefix_length=4)
    assert row_signature(prefix) != row_signature(prefix.replace(prefix_length=8))
    flipped = prefix.replace(prefix_reparam=not prefix.prefix_reparam)
    assert row_signature(prefix) != row_signature(flipped)
    with pytest.raises(ConfigError, match="method='unipelt' cannot be fused"):
        row_signature(MethodConfig(method="unipelt"))


def test_lora_and_fusion_trials_in_one_pool_train_as_each_alone(sources):
    fusion = {**POOL_BASE, "method": "fusion", "fusion": "static", "sources": SOURCES,
              "bottleneck": 8}  # fmt: skip
    configs = [
        {**POOL_BASE, "rank": 4, "alpha": 8, "lr": 3e-3, "seed": 1},
        {**fusion, "target_bottleneck": 4, "lr": 2e-3, "seed": 2, "weight_decay": 0.1},
        # ends first (its 200-row subset): the other fusion trial trains on in a half-idle group
        {**fusion, "target_bottleneck": 8, "lr": 4e-3, "seed": 3, "sources": ("imdb",),
         "train_samples": 200},
        {**POOL_BASE, "rank": 8, "alpha": 8, "lr": 1e-3, "seed": 4, "train_samples": 200},
    ]  # fmt: skip
    limits = {"lora": RowLimits(rank=8), "fusion": RowLimits(target_bottleneck=8, sources=SOURCES)}
    status = pool_each_as_alone(configs, limits, sources)
    assert (status["groups"], status["rows"], status["training"]) == (2, 4, 0)


def test_lora_fusion_trials_of_other_linears_and_fusion_types_share_a_group_as_each_alone(sources):
    hybrid = {**POOL_BASE, "method": "lora_fusion", "fusion": "static", "sources": SOURCES,
              "bottleneck": 8, "rank": 4, "alpha": 8}  # fmt: skip
    configs = [{**hybrid, "lr": 3e-3, "seed": 1},
               {**hybrid, "placement": "ffn", "rank": 2, "lr": 2e-3, "seed": 2,
                "fusion": "dynamic", "fusion_layers": (1,)}]  # fmt: skip
    limits = {"lora_fusion": RowLimits(rank=4, sources=SOURCES, placement="attn_qv_ffn",
                                       fusion="dynamic")}  # fmt: skip
    status = pool_each_as_alone(configs, limits, sources)
    assert (status["groups"], status["rows"]) == (1, 2)


def test_fusion_trials_of_the_top_layer_fuse_there_only_as_each_alone(sources):
    """A study whose fusion trials fuse at some layers only (e4_budget's at its top one or two):
    its rows fuse at their union of layers, not every layer, and train as each trial alone."""
    fusion = {**POOL_BASE, "method": "fusion", "sources": SOURCES, "bottleneck": 8,
              "fusion_layers": (1,)}  # fmt: skip
    configs = [
        {**fusion, "fusion": "static", "target_bottleneck": 4, "lr": 3e-3, "seed": 1},
        {**fusion, "fusion": "dynamic", "sources": ("imdb",), "lr": 2e-3, "seed": 2},
    ]
    limits = {"fusion": RowLimits(target_bottleneck=8, sources=SOURCES, fusion="dynamic",
                                  fusion_layers=(1,))}  # fmt: skip
    status = pool_each_as_alone(configs, limits, sources)
    assert (status["groups"], status["rows"]) == (1, 2)


def pool_each_as_alone(configs: list[dict], limits: dict[str, RowLimits], sources) -> dict:
    """Train ``configs`` in a pool of 2 rows per group, check each trial's reports and weights
    against the trial trained alone, and return the pool's status at the end."""
    data = dataclasses.replace(POOL_DATA, source_adapters={8: dict(sources)})
    pool = FusedPool(data, slots=2, limits=limits, device="cpu", build=pool_build)
    try:
        runs = [poll_to_end(pool, t) for t in [pool.join(c) for c in configs]]
        status = pool.status()
    finally:
        pool.close()
    for config, reports in zip(configs, runs, strict=True):
        rows = train_rows(data, config.get("train_samples"), seed=config["seed"])
        reference, result = alone(config, rows, data)
        weights = load(reports[-1][WEIGHTS_KEY])  # with the frozen sources a fusion trial saves
        assert_same_weights({n: weights[n] for n in reference}, reference)
        assert reports[-1]["best_dev_score"] == result.best_dev_score
        assert reports[-1]["step"] == result.steps
    return status


@pytest.mark.parametrize("method", ["fusion", "lora_fusion"])
def test_a_pool_of_rows_over_a_bf16_backbone_takes_its_trials(method, sources):
    """What a GPU runs (precision bf16 stores the pool's shared copy bf16): the group's rows
    still admit the trials, which arrive fp32, and every trial finishes (the first e4_budget
    pool on an H200 refused each: its frozen weights compared fp32 against bf16)."""
    data = dataclasses.replace(POOL_DATA, source_adapters={8: dict(sources)})
    lora = {"rank": 4, "alpha": 8} if method == "lora_fusion" else {}
    fusion = {**POOL_BASE, "method": method, "fusion": "static", "sources": SOURCES,
              "bottleneck": 8, "precision": "bf16", **lora}  # fmt: skip
    configs = [{**fusion, "target_bottleneck": 4, "seed": 1},
               {**fusion, "target_bottleneck": 8, "seed": 2, "lr": 3e-3}]  # fmt: skip
    limits = {method: RowLimits(rank=4, target_bottleneck=8, sources=SOURCES)}
    pool = FusedPool(data, slots=2, limits=limits, device="cpu", build=pool_build)
    try:
        runs = [poll_to_end(pool, t) for t in [pool.join(c) for c in configs]]
    finally:
        pool.close()
    assert all(r[-1]["best_dev_score"] is not None for r in runs)


def test_a_pool_refuses_a_trial_larger_than_its_rows(sources):
    data = dataclasses.replace(POOL_DATA, source_adapters={8: dict(sources)})
    fusion = RowLimits(sources=("glue/sst2",), fusion_layers=(1,))
    limits = {"fusion": fusion, "pfeiffer": RowLimits(bottleneck=8),
              "lora_fusion": RowLimits(sources=("glue/sst2",), placement="ffn")}  # fmt: skip
    pool = FusedPool(data, slots=2, limits=limits, device="cpu", build=pool_build)
    try:
        with pytest.raises(ConfigError, match="rows fuse sources glue/sst2, not 'imdb'"):
            pool.join({**POOL_BASE, "method": "fusion", "sources": SOURCES, "bottleneck": 8})
        with pytest.raises(ConfigError, match="rows fuse at layer 1, not fusion_layers=every"):
            pool.join({**POOL_BASE, "method": "fusion", "sources": ("glue/sst2",),
                       "bottleneck": 8})  # fmt: skip
        with pytest.raises(
            ConfigError,
            match="lora_fusion rows hold LoRA on placement='ffn', "
            "which lacks some linears of placement='attn_qv'",
        ):
            pool.join({**POOL_BASE, "method": "lora_fusion", "sources": ("glue/sst2",),
                       "bottleneck": 8, "rank": 4})  # fmt: skip
        with pytest.raises(ConfigError, match="bottleneck <= 8, not bottleneck=16"):
            pool.join({**POOL_BASE, "method": "pfeiffer", "bottleneck": 16, "seed": 1})
        pool.join({**POOL_BASE, "method": "pfeiffer", "bottleneck": 8, "seed": 1})
        with pytest.raises(ConfigError, match="lora_grow.*cannot be fused"):
            pool.join({**POOL_BASE, "method": "lora_grow", "rank": 4, "seed": 2})
    finally:
        pool.close()


@pytest.mark.parametrize("case", ["lora_fusion-union", "fusion-dynamic", "prefix-reparam"])
def test_a_bf16_backbone_runs_without_autocast_with_fp32_rows_and_heads(case, sources):
    """What a GPU runs (fit_fused and the pool store the backbone bf16 where precision is bf16):
    the frozen copy in bf16, each row's weights cast from its fp32 row every forward, the heads
    fp32; up to bf16 rounding the logits of the fp32 rows, and every row gets an fp32 gradient."""
    methods = configs_of(case)
    models = [member(m, seed=i, sources=sources) for i, m in enumerate(methods)]
    template = member(group_template(methods), seed=0, sources=sources)
    full, fused = (no_dropout(FusedRows(models, template=template)) for _ in range(2))
    with torch.no_grad():
        full.theta.add_(torch.randn_like(full.theta) * 0.05 * (full.scale != 0))
        fused.theta.copy_(full.theta)
    ids = torch.randint(5, 100, (3 * 4, 9))
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0  # padding too
    before = {n: id(p) for n, p in fused.net.named_parameters(remove_duplicate=False)}
    reference = fused(ids, mask)
    # the forward leaves the shared copy as it was: no row's tensor stays in it (a prefix pool
    # reachable by three paths did keep them, and then could not be cast)
    assert {n: id(p) for n, p in fused.net.named_parameters(remove_duplicate=False)} == before
    torch.testing.assert_close(reference, full(ids, mask))
    fused.backbone_to(torch.bfloat16)
    assert fused.backbone_dtype == torch.bfloat16 and fused.autocast_precision("auto") == "fp32"
    frozen = [p for n, p in fused.net.named_parameters() if not n.startswith("classifier")]
    assert all(p.dtype == torch.bfloat16 for p in frozen if p.is_floating_point())
    assert fused.theta.dtype == torch.float32  # AdamW's master copy
    logits = fused(ids, mask)
    assert logits.dtype == torch.float32  # the heads run in fp32
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.05)  # bf16 rounding only
    extra = fused.row_regularization()
    loss = logits.sum() + (0 if extra is None else extra.sum())
    loss.backward()
    grad = fused.theta.grad
    assert grad is not None and grad.dtype == torch.float32
    assert bool(grad.abs().sum(dim=1).gt(0).all())  # every row learns
    assert not grad[fused.scale == 0].any()  # padding still gets none
    # a pool's later trial (fp32) takes a row of the bf16 copy; another backbone still cannot
    fused.load_row(1, member(methods[1], seed=7, sources=sources))
    other = member(methods[1], seed=7, sources=sources)
    with torch.no_grad():
        other.encoder.embeddings.word_embeddings.weight.add_(0.01)
    with pytest.raises(ConfigError, match="frozen encoder.embeddings.word_embeddings.weight"):
        fused.load_row(1, other)
    # fit_fused stores the backbone bf16 where precision is bf16, and every trial trains
    fused = no_dropout(FusedRows([member(m, seed=i, sources=sources)
                                  for i, m in enumerate(methods)], template=template))  # fmt: skip
    configs = [c.replace(precision="bf16") for c in CONFIGS]
    results = fit_fused(fused, TRAIN, DEV, configs, task_kind="classification",
                        metric="accuracy", device="cpu")  # fmt: skip
    assert fused.backbone_dtype == torch.bfloat16
    assert all(r.best_dev_score is not None and r.steps == 24 for r in results)


def test_rows_may_replay_from_graphs():
    """No member with per-step hooks becomes a row (check_rows), so nothing runs between steps:
    the training core captures a row step where it can, and a capture that fails turns graphs off
    for the run (trainables/training/graphs.py), said in the trial's graphs_off."""
    assert FusedRows.graph_safe


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("case", [
    # prefix-flat waited for the host on an H200 (2026-12-05, commit c598cf8): adapters made the flat
    # prefix's mask on the host; found on CPU by tests/test_host_waits.py, fixed; passed on an H100
    # (2026-12-06, commit 170b2e4), as did fusion-types
    "pfeiffer", "lora_fusion-union", "fusion-dynamic", "prefix-flat", "fusion-types",
])  # fmt: skip
def test_rows_replay_from_graphs_on_cuda_as_they_run_eager(case, sources):
    """Graphed (bf16 backbone) against eager (the same, cuda_graphs off): the same run up to
    rounding; every step after the first of a shape replays."""
    methods = configs_of(case)

    def run(graphs: bool) -> list:
        models = [member(m, seed=i, sources=sources) for i, m in enumerate(methods)]
        template = member(group_template(methods), seed=0, sources=sources)
        fused = no_dropout(FusedRows(models, template=template))
        configs = [c.replace(cuda_graphs=graphs) for c in CONFIGS]
        return fit_fused(fused, TRAIN, DEV, configs, task_kind="classification",
                         metric="accuracy", device="cuda")  # fmt: skip

    graphed, eager = run(True), run(False)
    for g, e in zip(graphed, eager, strict=True):
        assert g.graphs_off is None and g.cuda_graphs >= 1
        assert e.cuda_graphs == 0
        assert g.best_dev_score == pytest.approx(e.best_dev_score, abs=0.03)
        assert g.samples_seen == e.samples_seen
