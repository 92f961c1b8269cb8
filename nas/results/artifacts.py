"""Files attached to a study or its trials as Optuna artifacts, shown by optuna-dashboard.

Artifacts live in a folder beside the study database (`studies/<study>-artifacts` by
default). A study-level file (the report page) is overwritten in place; a trial's
file (its architecture JSON) is attached once. Finished trials cannot take new system
attributes in Optuna, so a trial's file is recorded on the study under
optuna-dashboard's own key for trial artifacts (`dashboard:artifacts:<trial id>:<id>`).
"""

from __future__ import annotations

import io
import json
import mimetypes
import uuid
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

__all__ = ["attach_trial_file", "default_artifact_dir", "replace_study_file"]

STUDY_PREFIX = "artifacts:"  # optuna.artifacts' key for a study's artifacts
TRIAL_PREFIX = "dashboard:artifacts:"  # optuna-dashboard's key for a trial's artifacts


def default_artifact_dir(study: str) -> Path:
    return Path("studies") / f"{study}-artifacts"


def _store(folder: Path) -> FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _metas(study: optuna.Study, prefix: str) -> dict[str, dict]:
    out = {}
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if key.startswith(prefix) and value not in (None, "null"):
            meta = json.loads(value)
            if meta:
                out[key] = meta
    return out


def replace_study_file(study: optuna.Study, folder: Path, path: Path) -> str:
    """Upload `path` as a study artifact; a file of the same name is overwritten in place
    (same artifact id and record), so no retired record is left for readers to trip on."""
    store = _store(folder)
    for meta in _metas(study, STUDY_PREFIX).values():
        if meta.get("filename") == path.name:
            with path.open("rb") as f:
                store.write(meta["artifact_id"], f)
            return meta["artifact_id"]
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)


def attach_trial_file(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, folder: Path, name: str, text: str
) -> str | None:
    """Attach `text` as file `name` to a (finished) trial, once; None if already there."""
    prefix = f"{TRIAL_PREFIX}{trial._trial_id}:"
    if any(m.get("filename") == name for m in _metas(study, prefix).values()):
        return None
    artifact_id = str(uuid.uuid4())
    _store(folder).write(artifact_id, io.BytesIO(text.encode()))
    meta = {
        "artifact_id": artifact_id,
        "filename": name,
        "mimetype": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "encoding": None,
    }
    study._storage.set_study_system_attr(study._study_id, prefix + artifact_id, json.dumps(meta))
    return artifact_id
