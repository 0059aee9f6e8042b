"""What identifies a merge's inputs: each parent's weight-file hashes, and the digests made from them.

The one place the parents' identity is computed, written down and read back:

* :func:`parent_provenance` — ``{ref: {path, weights: {weight file: sha256}}}`` of opened parents
  (``medmerge.json`` and the model card hold it);
* :func:`fingerprint` — sha256 over the canonical JSON of ``{ref: {weight file: sha256}}``: one digest of a
  merge's inputs (``medmerge.json``'s ``parents_fingerprint``, retrain's record; per parent, the evaluation
  cache's identity of a candidate);
* :func:`checkpoint_sha256` — sha256 over one checkpoint's ``{weight file: sha256}``, without its path
  (a fine-tuning initialisation, an evaluated checkpoint);
* :func:`tags` / :func:`read_tags` — the registry tags of a merged version: :data:`WEIGHTS_TAG` holds that
  JSON mapping (cut to the registry's tag limit on a version with very many parents' files),
  :data:`FINGERPRINT_TAG` its digest. Versions registered before the tags were named so carry the JSON
  under :data:`LEGACY_TAG`, which is still read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from medmerge.io.checkpoint import Checkpoint
from medmerge.io.hashing import sha256_files

ParentWeights = dict[str, dict[str, str]]   # parent ref -> {weight file name: sha256}

WEIGHTS_TAG = "parents_weight_hashes"    # JSON {parent ref: {weight file: sha256}}
FINGERPRINT_TAG = "parents_fingerprint"  # sha256 of that JSON
LEGACY_TAG = "parents_sha256"            # the same JSON, as versions registered before 2026-12 name it


def parent_provenance(parents: Mapping[str, Checkpoint]) -> dict[str, dict]:
    """``{ref: {path, weights: {file: sha256}}}`` for opened parents (hashes cached across runs)."""
    files = [f for c in parents.values() for f in c.weight_files]
    digests = sha256_files(files)
    return {
        ref: {"path": str(c.path), "weights": {f.name: digests[str(f.resolve())] for f in c.weight_files}}
        for ref, c in parents.items()
    }


def weights(provenance: Mapping[str, dict]) -> ParentWeights:
    """``{ref: {file: sha256}}`` of a :func:`parent_provenance` result (the paths left out)."""
    return {ref: dict(p["weights"]) for ref, p in provenance.items()}


def weights_json(parents: ParentWeights) -> str:
    """The canonical JSON of ``{ref: {file: sha256}}`` (sorted keys): what :func:`fingerprint` hashes."""
    return json.dumps({r: parents[r] for r in sorted(parents)}, sort_keys=True)


def fingerprint(parents: ParentWeights) -> str:
    """One digest of a merge's inputs: sha256 of :func:`weights_json`."""
    return hashlib.sha256(weights_json(parents).encode()).hexdigest()


def checkpoint_sha256(files: Mapping[str, str]) -> str:
    """One checkpoint's identity, wherever it lies: sha256 over its ``{weight file: sha256}``."""
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()


def tags(parents: ParentWeights) -> dict[str, str]:
    """The registry tags naming a merged version's parents."""
    return {WEIGHTS_TAG: weights_json(parents), FINGERPRINT_TAG: fingerprint(parents)}


@dataclass(frozen=True)
class RecordedParents:
    """What a registered version's tags say of its parents: ``raw`` the JSON's text under ``tag`` (None: no such
    tag), ``weights`` its mapping (None: absent, cut at the registry's tag limit, or not a mapping of parents to
    weight files), ``fingerprint`` its digest (None on a version registered before it was tagged)."""

    tag: str
    raw: str | None
    weights: ParentWeights | None
    fingerprint: str | None

    def matches(self, current: ParentWeights) -> bool | None:
        """Whether the recorded parents are ``current``, by content and place; None when the tags cannot say."""
        if self.fingerprint is not None:
            return self.fingerprint == fingerprint(current)
        if self.weights is not None:
            return self.weights == current
        return None


def read_tags(version_tags: Mapping[str, str]) -> RecordedParents:
    """The parents recorded on a registered version (see :func:`tags`)."""
    tag = LEGACY_TAG if WEIGHTS_TAG not in version_tags and LEGACY_TAG in version_tags else WEIGHTS_TAG
    raw = version_tags.get(tag)
    try:
        value = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        value = None
    return RecordedParents(tag, raw, value, version_tags.get(FINGERPRINT_TAG))
