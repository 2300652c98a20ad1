"""The task registry: every data set the service knows, as frozen :class:`Task` records.

A task carries everything ``list`` and ``describe`` need offline (label names, metric, splits);
where the rows come from (local mirror, Hugging Face Hub or a user's folder) is
:mod:`trainables.data.loading`'s business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from search_spaces.errors import ConfigError, one_of
from search_spaces.registry import Registry

# metric -> what it means; every metric is maximised (mode="max")
METRICS: dict[str, str] = {
    "accuracy": "accuracy",
    "mcc": "Matthews correlation",
    "f1": "binary F1 of class 1 (accuracy reported too)",
    "pearson_spearman": "mean of Pearson and Spearman correlation",
    "macro_f1": "macro-averaged F1",
}
SPLITS = ("train", "validation", "test")
SINGLE_SCHEMA = ("text",)
PAIR_SCHEMA = ("sentence1", "sentence2")
SCHEMAS = (SINGLE_SCHEMA, PAIR_SCHEMA)
REGRESSION_METRIC = "pearson_spearman"


@dataclass(frozen=True)
class Task:
    """One text-classification (or regression) task.

    ``splits`` are the official splits that carry labels (GLUE's unlabelled test is not one);
    ``reported_split`` is the one results are quoted on: ``test`` if present, else ``validation``,
    else ``None`` (single-split data sets: train/dev/test are carved, see ``splits.py``).
    Exactly one of ``mirror_path`` (a registered task; ``hub_id`` is its fallback source) and
    ``folder`` (a user's data set) is set.
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    metric: str
    splits: tuple[str, ...]
    mirror_path: str | None = None  # <data_dir>/<mirror_path>/<split>.parquet
    folder: str | None = None  # a user's folder of train/validation/test files
    hub_id: str | None = None
    hub_config: str | None = None
    hub_columns: tuple[tuple[str, str], ...] = ()  # (hub column, our column) renames
    hub_splits: tuple[tuple[str, tuple[str, ...]], ...] = ()  # our split <- concat of hub splits
    drop_empty: bool = False  # drop rows whose text is "" (documented per task in ``note``)
    label_range: tuple[float, float] | None = None  # regression targets
    note: str = ""

    def __post_init__(self) -> None:
        if self.text_columns not in SCHEMAS:
            raise one_of(f"task {self.name}: text_columns", self.text_columns, SCHEMAS)
        if self.metric not in METRICS:
            raise one_of(f"task {self.name}: metric", self.metric, METRICS)
        if not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ConfigError(f"task {self.name}: num_labels={self.num_labels!r} must be >= 1")
        if (self.num_labels == 1) != (self.metric == REGRESSION_METRIC):
            raise ConfigError(
                f"task {self.name}: metric={self.metric!r} needs num_labels "
                f"{'== 1' if self.metric == REGRESSION_METRIC else '>= 2'}, got {self.num_labels}"
            )
        if not self.is_regression and len(self.label_names) != self.num_labels:
            raise ConfigError(
                f"task {self.name}: {len(self.label_names)} label_names for "
                f"num_labels={self.num_labels}"
            )
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or "train" not in self.splits:
            raise ConfigError(
                f"task {self.name}: splits={self.splits!r} must include 'train' and be among {SPLITS}"
            )
        if (self.mirror_path is None) == (self.folder is None):
            raise ConfigError(f"task {self.name}: set exactly one of mirror_path and folder")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def task_kind(self) -> str:
        """``"regression"`` or ``"classification"`` (the trainable's vocabulary)."""
        return "regression" if self.is_regression else "classification"

    @property
    def is_pair(self) -> bool:
        return self.text_columns == PAIR_SCHEMA

    @property
    def reported_split(self) -> str | None:
        for split in ("test", "validation"):
            if split in self.splits:
                return split
        return None

    def hub_splits_for(self, split: str) -> tuple[str, ...]:
        """The hub splits whose concatenation is our ``split`` (by default the same name)."""
        return dict(self.hub_splits).get(split, (split,))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Rebuild from :meth:`to_dict` output (lists from JSON become tuples again)."""
        fixed = dict(data)
        for key in ("text_columns", "label_names", "splits"):
            fixed[key] = tuple(fixed[key])
        fixed["hub_columns"] = tuple(tuple(pair) for pair in fixed.get("hub_columns", ()))
        fixed["hub_splits"] = tuple((s, tuple(h)) for s, h in fixed.get("hub_splits", ()))
        if fixed.get("label_range") is not None:
            fixed["label_range"] = tuple(fixed["label_range"])
        return cls(**fixed)


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`; duplicate or malformed names are refused."""
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    """The registered task ``name``; unknown names raise ConfigError listing the valid ones."""
    return TASKS.get(name)


# ---- the registered tasks (label names as in each mirror folder's labels.json) ------------------

_BINARY_SENTIMENT = ("negative", "positive")
_NEWSGROUPS = tuple(
    [
        "alt.atheism",
        "comp.graphics",
        "comp.os.ms-windows.misc",
        "comp.sys.ibm.pc.hardware",
        "comp.sys.mac.hardware",
        "comp.windows.x",
        "misc.forsale",
        "rec.autos",
        "rec.motorcycles",
        "rec.sport.baseball",
        "rec.sport.hockey",
        "sci.crypt",
        "sci.electronics",
        "sci.med",
        "sci.space",
        "soc.religion.christian",
        "talk.politics.guns",
        "talk.politics.mideast",
        "talk.politics.misc",
        "talk.religion.misc",
    ]
)
_TREC_COARSE = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
# fine classes in Hugging Face trec's order: grouped by coarse class, coarse classes in order
_TREC_FINE_BY_COARSE = {
    "ABBR": "abb exp",
    "ENTY": "animal body color cremat currency dismed event food instru lang letter other plant "
    "product religion sport substance symbol techmeth termeq veh word",
    "DESC": "def desc manner reason",
    "HUM": "gr ind title desc",
    "LOC": "city country mount other state",
    "NUM": "code count date dist money ord other period perc speed temp volsize weight",
}
_TREC_FINE = tuple(f"{c}:{f}" for c in _TREC_COARSE for f in _TREC_FINE_BY_COARSE[c].split())
_GLUE_TEST_NOTE = "GLUE's test split is unlabelled, so validation is reported."
_CARVED_NOTE = "No official split: train/dev/test are carved with a fixed seed."
_SENTENCE_COLUMN = (("sentence", "text"),)


def _glue(config: str, labels: tuple[str, ...], metric: str, **extra: Any) -> Task:
    pair = config != "sst2" and config != "cola"
    return Task(
        name=f"glue/{config}", mirror_path=f"glue/{config}", hub_id="nyu-mll/glue",
        hub_config=config, text_columns=PAIR_SCHEMA if pair else SINGLE_SCHEMA,
        hub_columns=() if pair else _SENTENCE_COLUMN, num_labels=len(labels) or 1,
        label_names=labels, metric=metric, splits=("train", "validation"),
        note=" ".join((_GLUE_TEST_NOTE, extra.pop("note", ""))).strip(), **extra,
    )  # fmt: skip


def _tweet_eval(config: str, labels: tuple[str, ...], note: str = "") -> Task:
    return Task(
        name=f"tweet_eval/{config}", mirror_path=f"tweet_eval/{config}",
        hub_id="cardiffnlp/tweet_eval", hub_config=config, text_columns=SINGLE_SCHEMA,
        num_labels=len(labels), label_names=labels, metric="macro_f1",
        splits=("train", "validation", "test"), note=note,
    )  # fmt: skip


def _single_split(name: str, hub_id: str | None, labels: tuple[str, ...], **extra: Any) -> Task:
    return Task(
        name=name, mirror_path=name, hub_id=hub_id, text_columns=SINGLE_SCHEMA,
        num_labels=len(labels), label_names=labels, metric="accuracy", splits=("train",),
        note=" ".join((_CARVED_NOTE, extra.pop("note", ""))).strip(), **extra,
    )  # fmt: skip


_REGISTERED = (
    _glue("sst2", _BINARY_SENTIMENT, "accuracy"),
    _glue("cola", ("unacceptable", "acceptable"), "mcc"),
    _glue("mrpc", ("not_equivalent", "equivalent"), "f1",
          note="Mirror text is GLUE's untokenised MSR text; the hub copy is SentEval's tokenised one."),
    _glue("stsb", (), "pearson_spearman", label_range=(0.0, 5.0)),
    _glue("rte", ("entailment", "not_entailment"), "accuracy"),
    Task(name="imdb", mirror_path="imdb/default", hub_id="stanfordnlp/imdb",
         hub_config="plain_text", text_columns=SINGLE_SCHEMA, num_labels=2,
         label_names=("neg", "pos"), metric="accuracy", splits=("train", "test")),
    Task(name="ag_news", mirror_path="ag_news/default", hub_id="fancyzhx/ag_news",
         text_columns=SINGLE_SCHEMA, num_labels=4,
         label_names=("World", "Sports", "Business", "Sci/Tech"), metric="accuracy",
         splits=("train", "test"),
         note="The mirror holds only test (7,600); train (120,000) loads from the hub."),
    _tweet_eval("sentiment", ("negative", "neutral", "positive"),
                note="Mirror train is a documented rebuild from SemEval-2017 (45,616 rows vs "
                "45,615; not canonical): quote as 'train rebuilt from SemEval'."),
    _tweet_eval("irony", ("non_irony", "irony")),
    _tweet_eval("emotion", ("anger", "joy", "optimism", "sadness")),
    _tweet_eval("hate", ("not-hate", "hate"),
                note="8 empty tweets (7 train, 1 validation) are kept, as in the source."),
    _tweet_eval("offensive", ("not-offensive", "offensive")),
    Task(name="sst5", mirror_path="sst5/default", hub_id="SetFit/sst5",
         text_columns=SINGLE_SCHEMA, num_labels=5,
         label_names=("very negative", "negative", "neutral", "positive", "very positive"),
         metric="accuracy", splits=("train", "validation", "test")),
    Task(name="trec/coarse", mirror_path="trec/coarse", hub_id="CogComp/trec",
         text_columns=SINGLE_SCHEMA, hub_columns=(("coarse_label", "label"),), num_labels=6,
         label_names=_TREC_COARSE, metric="accuracy", splits=("train", "test")),
    Task(name="trec/fine", mirror_path="trec/fine", hub_id="CogComp/trec",
         text_columns=SINGLE_SCHEMA, hub_columns=(("fine_label", "label"),), num_labels=50,
         label_names=_TREC_FINE, metric="accuracy", splits=("train", "test"),
         note="8 of the 50 fine classes never occur in test."),
    Task(name="newsgroups/bydate", mirror_path="newsgroups/bydate",
         hub_id="SetFit/20_newsgroups", text_columns=SINGLE_SCHEMA, num_labels=20,
         label_names=_NEWSGROUPS, metric="accuracy", splits=("train", "test"),
         note="Mirror keeps headers, quotes and signatures (sklearn remove=()); the hub "
         "copy's preprocessing is not verified against it."),
    _single_split("sentences/mr", "cornell-movie-review-data/rotten_tomatoes", _BINARY_SENTIMENT,
                  hub_splits=(("train", ("train", "validation", "test")),),
                  note="Hub: rotten_tomatoes' three splits together are MR's 10,662 rows."),
    _single_split("sentences/cr", "SetFit/SentEval-CR", _BINARY_SENTIMENT, drop_empty=True,
                  hub_splits=(("train", ("train", "test")),),
                  note="4 empty texts are dropped (3,771 rows left)."),
    _single_split("sentences/subj", "SetFit/subj", ("subjective", "objective"),
                  hub_splits=(("train", ("train", "test")),),
                  note="Hub copy labels are remapped through its label_text column."),
    _single_split("sentences/mpqa", "jxm/mpqa", _BINARY_SENTIMENT, drop_empty=True,
                  note="3 empty texts are dropped (10,603 rows left)."),
    _single_split("uci_sentiment/amazon", None, _BINARY_SENTIMENT, note="Local mirror only."),
    _single_split("uci_sentiment/imdb", None, _BINARY_SENTIMENT, note="Local mirror only."),
    _single_split("uci_sentiment/yelp", None, _BINARY_SENTIMENT, note="Local mirror only."),
)  # fmt: skip
for _task in _REGISTERED:
    register_task(_task)
