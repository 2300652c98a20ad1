"""``python -m tuner.params``: the parameter figures of one method on one backbone.

    python -m tuner.params --backbone minilm-l6 --method lora --set rank=8 placement=attn_qv
    python -m tuner.params --backbone bert-base --method fusion --set sources=a,b --verify --json
    python -m tuner.params --table     # every method on MiniLM; fusion fuses the demo's 3 sources
    python -m tuner.params --backbone minilm-l6 --table --set sources=a,b --verify

Prints ``trainable_params`` (what a budget constrains by default: the study plan's fairness rule)
and ``added_params``. ``--verify`` builds the model (real weights for pretrained backbones, the
meta device for ``bert-base``) and exits 1 with a diff unless both figures match the prediction.
Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from search_spaces.accounting import count_params
from search_spaces.errors import ConfigError
from search_spaces.method_config import FUSION_METHODS, METHODS, MethodConfig
from search_spaces.shapes import BackboneShape
from search_spaces.spaces import DEMO_SOURCES
from trainables.backbone_registry import backbone_source
from tuner.cli import add_set_argument, parse_sets, run_cli

DEFAULT_ACCOUNTING = "trainable_params"  # budgets count what the optimiser updates, head included
META_BACKBONES = ("bert-base",)  # random weights anyway: verify its counts on the meta device
VERIFY_FAILED = 1
# what a fusion row of --table fuses unless --set sources= says otherwise: the demo's three source
# adapters (README); a count depends on how many sources there are, not on which
TABLE_SOURCES = DEMO_SOURCES


@dataclass(frozen=True)
class ParamsReport:
    """What the command prints: the figures, and the built model's figures with ``--verify``."""

    backbone: str
    shape: BackboneShape
    config: MethodConfig
    trainable_params: int
    added_params: int
    budget_constrains: str = DEFAULT_ACCOUNTING
    built: dict[str, int] | None = None
    budget_trainable: int | None = None  # AdaLoRA: its parameters at the final rank (budget_rank)

    @property
    def mismatches(self) -> dict[str, tuple[int, int]]:
        """figure -> (predicted, built) where they differ."""
        if self.built is None:
            return {}
        predicted = {"trainable_params": self.trainable_params, "added_params": self.added_params}
        return {k: (v, self.built[k]) for k, v in predicted.items() if self.built[k] != v}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "backbone": self.backbone,
            "shape": asdict(self.shape),
            "config": self.config.to_dict(),
            "trainable_params": self.trainable_params,
            "added_params": self.added_params,
            "budget_constrains": self.budget_constrains,
        }
        if self.budget_trainable is not None:
            out["budget_trainable"] = self.budget_trainable
        if self.built is not None:
            out["built"] = self.built
            out["verified"] = not self.mismatches
        return out

    def to_text(self) -> str:
        s = self.shape
        marker = {self.budget_constrains: "  <- a budget constrains this by default"}
        lines = [
            f"backbone          {self.backbone} ({s.num_layers} layers, hidden {s.hidden})",
            f"method            {self.config.method}",
            f"trainable_params  {self.trainable_params:>14,}{marker.get('trainable_params', '')}",
            f"added_params      {self.added_params:>14,}{marker.get('added_params', '')}",
        ]
        if self.budget_trainable is not None:
            lines.append(f"budget_trainable  {self.budget_trainable:>14,}"
                         f"{marker.get('budget_trainable', '')} (at the final rank: budget_rank)")  # fmt: skip
        if self.built is not None:
            lines.append(
                "verify            "
                + ("ok: the built model matches" if not self.mismatches else "MISMATCH")
            )
            lines += [
                f"  {k}: predicted {p:,}, built {b:,} ({b - p:+,})"
                for k, (p, b) in self.mismatches.items()
            ]
        return "\n".join(lines)


def backbone_shape(name: str) -> BackboneShape:
    """The shape of ``name`` without loading weights (meta device)."""
    from trainables.backbones import load_backbone  # torch: only when a shape is needed

    return load_backbone(name, meta=True).shape


def verify(config: MethodConfig, backbone: str) -> dict[str, int]:
    """Build the model and return its two figures."""
    from trainables.backbones import load_backbone
    from trainables.methods import build_model

    model = build_model(config, load_backbone(backbone, meta=backbone in META_BACKBONES))
    return {"trainable_params": model.trainable_params(), "added_params": model.added_params()}


def report(backbone: str, config: MethodConfig, *, check: bool) -> ParamsReport:
    """Predict (and with ``check`` verify) the figures of ``config`` on ``backbone``."""
    shape = backbone_shape(backbone)
    count = count_params(config, shape)
    built = verify(config, backbone) if check else None
    constrains = DEFAULT_ACCOUNTING if count.budget_trainable is None else "budget_trainable"
    return ParamsReport(backbone, shape, config, count.trainable_params, count.added_params,
                        constrains, built, count.budget_trainable)  # fmt: skip


def table(backbone: str, sets: dict[str, str], *, check: bool) -> list[ParamsReport]:
    """Every method at its defaults (plus ``sets``) on ``backbone``; fusion methods fuse
    :data:`TABLE_SOURCES` unless ``sets`` names the sources."""
    from trainables.methods import METHOD_REGISTRY

    return [
        report(backbone, method_config(m, table_sets(m, sets)), check=check)
        for m in METHOD_REGISTRY.names()
    ]


def table_sets(method: str, sets: dict[str, str]) -> dict[str, str]:
    """``sets`` for ``method``'s row: a fusion method without ``sources`` gets the default ones."""
    if method in FUSION_METHODS and "sources" not in sets:
        return {"sources": ",".join(TABLE_SOURCES), **sets}
    return dict(sets)


def sources_note(sets: dict[str, str]) -> str:
    """The line above the table that says which sources its fusion rows fuse."""
    sources = sets["sources"].split(",") if "sources" in sets else list(TABLE_SOURCES)
    note = "" if "sources" in sets else " (the default; --set sources=A,B,... to change)"
    return (
        f"Fusion methods ({', '.join(FUSION_METHODS)}) fuse {len(sources)} sources: "
        f"{', '.join(sources)}{note}"
    )


def table_markdown(rows: list[ParamsReport]) -> str:
    """A markdown table of ``rows``: method, both figures, verification, paper."""
    from trainables.methods import METHOD_REGISTRY

    lines = [
        "| method | trainable_params | added_params | verified | library | paper |",
        "|---|---:|---:|---|---|---|",
    ]
    for row in rows:
        spec = METHOD_REGISTRY.get(row.config.method)
        verified = "-" if row.built is None else ("yes" if not row.mismatches else "NO")
        lines.append(
            f"| {spec.name} | {row.trainable_params:,} | {row.added_params:,} | {verified} | "
            f"{spec.library} | {spec.paper} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.params", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="minilm-l6", help="registered name, folder or hub id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--method", help=f"one of: {', '.join(METHODS)}")
    what.add_argument(
        "--table", action="store_true", help="every method at its defaults (markdown)"
    )
    add_set_argument(p, "MethodConfig knobs, e.g. --set rank=8 placement=attn_qv (repeatable)")
    p.add_argument(
        "--verify", action="store_true", help="build the model and compare (exit 1 on a diff)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def method_config(method: str, sets: dict[str, str]) -> MethodConfig:
    """``MethodConfig.from_dict`` of the ``--set`` strings, keeping ``layer_ranks`` in layer order.

    ``from_dict`` sorts and de-duplicates every integer tuple, right for ``layers`` but wrong for
    per-layer ranks, so they are parsed here and set afterwards.
    """
    ranks = sets.pop("layer_ranks", None)
    config = MethodConfig.from_dict({"method": method, **sets})
    if ranks is None or ranks.lower() in ("", "none"):
        return config
    try:
        parsed = tuple(int(r) for r in ranks.split(","))
    except ValueError:
        raise ConfigError(f"layer_ranks={ranks!r} must be comma-separated integers") from None
    return config.replace(layer_ranks=parsed)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    backbone_source(args.backbone)  # an unknown name is refused before torch is imported
    if args.table:
        sets = parse_sets(args.set)
        rows = table(args.backbone, sets, check=args.verify)
        if args.json:
            text = json.dumps([r.to_dict() for r in rows], indent=2)
        else:
            text = f"{sources_note(sets)}\n\n{table_markdown(rows)}"
        print(text)
        return VERIFY_FAILED if any(r.mismatches for r in rows) else 0
    config = method_config(args.method, parse_sets(args.set))
    result = report(args.backbone, config, check=args.verify)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.to_text())
    return VERIFY_FAILED if result.mismatches else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
