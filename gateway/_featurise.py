"""De-identified records -> observation facts and feature rows: the infer stage's CPU-heavy part.

A :class:`Featuriser` takes a micro-batch of ``deidentified`` topic entries and, for each
record, adds its observations to its subject's history, works out which models it
triggers, and builds one feature row per (record, model) from the subject's history within
the model's windows, or says why not. It only reads the store. With
``inference.feature_workers`` > 0 the batch is shared out over that many worker processes
(``gateway._workers``, ADR 8), each subject's records in one share and in topic order, so
that a record sees the facts of the same batch's earlier records as it does in the stage's
own thread. Scoring, advisories and the commit stay in the stage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gateway._store import Store, TopicEntry
from inference import FeatureExtractor, MissingInputs, ModelManifest, observations_from_bundle
from schemas import DeidentifiedRecord, InferenceRequest, ObservationFact

ConfigInputs = Mapping[str, Mapping[str, Mapping[str, float]]]  # model -> subject -> inputs


@dataclass
class RecordFeatures:
    """One record's facts, its feature rows (model id, row) and why rows were not built."""

    message_id: int
    subject: str
    facts: list[ObservationFact]
    requests: list[tuple[str, InferenceRequest]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class _BatchHistories:
    """Subjects' observation histories while one batch is featurised.

    A subject's history is what the store holds since the earliest moment any of the
    batch's records has needed so far (the longest window of the models it triggers, so a
    vital sign does not load a week of creatinine), plus the facts of the batch's earlier
    records, which are not stored yet. A record that needs to look further back than what
    was loaded (another model, or an older message) reloads the subject from the store.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._since: dict[str, datetime] = {}
        self._stored: dict[str, list[ObservationFact]] = {}
        self._batch: dict[str, list[ObservationFact]] = defaultdict(list)

    def add(self, subject: str, facts: list[ObservationFact]) -> None:
        self._batch[subject].extend(facts)

    def get(self, subject: str, since: datetime) -> list[ObservationFact]:
        loaded = self._since.get(subject)
        if loaded is None or since < loaded:
            self._stored[subject] = self._store.history(subject, since)
            self._since[subject] = since
        return [*self._stored[subject], *self._batch[subject]]


class Featuriser:
    """Feature rows for the models in ``manifests``; ``unusable``: model id -> why it is
    not used (its messages are filtered with that reason)."""

    def __init__(
        self,
        manifests: Sequence[ModelManifest],
        config_inputs: ConfigInputs,
        unusable: Mapping[str, str],
    ) -> None:
        self._extractors = {m.id: FeatureExtractor(m) for m in manifests}
        # A model scores a message only if the message brings one of its inputs: a lab
        # result must not re-emit yesterday's vital-sign scores, and vice versa.
        self._triggers = {
            m.id: frozenset((c.system, c.code) for i in m.inputs for c in i.codes)
            for m in manifests
        }
        self._config_inputs = config_inputs
        self._unusable = dict(unusable)

    def run(
        self, entries: Sequence[TopicEntry], modes: Mapping[str, str], store: Store
    ) -> list[RecordFeatures]:
        """Each entry's :class:`RecordFeatures`, in order."""
        histories = _BatchHistories(store)
        return [
            self._one(DeidentifiedRecord.model_validate_json(e.payload), modes, histories)
            for e in entries
        ]

    def _one(
        self, record: DeidentifiedRecord, modes: Mapping[str, str], histories: _BatchHistories
    ) -> RecordFeatures:
        facts = observations_from_bundle(record.bundle)
        out = RecordFeatures(record.message_id, record.subject, facts)
        if not facts:
            out.reasons.append("no coded observations for any model")
            return out
        histories.add(record.subject, facts)
        codes = {(f.system, f.code) for f in facts}
        triggered = [m for m, wanted in self._triggers.items() if codes & wanted]
        if not triggered:
            out.reasons.append("no model uses any of its observation codes")
        for model_id in [m for m in triggered if modes.get(m) == "off"]:
            out.reasons.append(f"{model_id}: switched off")
            triggered.remove(model_id)
        for model_id in [m for m in triggered if m in self._unusable]:
            out.reasons.append(f"{model_id}: {self._unusable[model_id]}")
            triggered.remove(model_id)
        if not triggered:
            return out
        now = max(f.effective for f in facts)
        window = max(self._extractors[m].max_window for m in triggered)
        history = histories.get(record.subject, now - window)
        for model_id in triggered:
            extractor = self._extractors[model_id]
            config = self._config_inputs.get(model_id, {}).get(record.subject, {})
            row = extractor.extract(record.message_id, record.subject, history, now, config)
            if isinstance(row, MissingInputs):
                out.reasons.append(f"{model_id}: missing inputs {', '.join(row.names)}")
            else:
                out.requests.append((model_id, row))
        return out


def shares(entries: Sequence[TopicEntry], workers: int) -> list[list[int]]:
    """Entry indexes per worker: every subject's entries in one share, in topic order; a
    new subject goes to the share with the fewest entries so far."""
    parts: list[list[int]] = [[] for _ in range(workers)]
    home: dict[str, int] = {}
    for i, entry in enumerate(entries):
        at = home.get(entry.key)
        if at is None:
            at = home[entry.key] = min(range(workers), key=lambda w: len(parts[w]))
        parts[at].append(i)
    return [part for part in parts if part]


# --- on worker processes (gateway._workers) -----------------------------------------------

_state: tuple[Featuriser, Store] | None = None  # in a worker: its featuriser and store


def start_worker(
    store_path: Path,
    manifests: Sequence[ModelManifest],
    config_inputs: ConfigInputs,
    unusable: Mapping[str, str],
) -> None:
    """A feature worker's set-up: the stage's featuriser and its own store connection."""
    global _state
    _state = (Featuriser(manifests, config_inputs, unusable), Store(store_path))


def featurise_share(work: tuple[Sequence[TopicEntry], Mapping[str, str]]) -> list[RecordFeatures]:
    """:meth:`Featuriser.run` over a worker's share of a batch and the batch's model modes."""
    assert _state is not None, "worker not started"
    featuriser, store = _state
    entries, modes = work
    return featuriser.run(entries, modes, store)
