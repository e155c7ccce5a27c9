"""Training checkpoints: safetensors + JSON only, written atomically, verified on load.

A checkpoint is a folder ``<out>/checkpoints/<stage>-<step:08d>/``::

    model.safetensors       the trained module's state_dict (current weights)
    ema.safetensors         the EMA weights (what the saved prior will hold)
    optimizer.safetensors   every tensor of the optimizer state, keyed "state.<param>.<name>"
    state.json              format tag, stage, step, optimizer param groups and non-tensor state,
                            EMA update count, loss history, stage extras (unit map, latent
                            scaling, ...), the training config, and the SHA-256 of each file

No pickle anywhere: everything loads with ``safetensors`` and ``json`` (nothing can execute
code). The folder is written under a temporary name and renamed into place once complete and
flushed to disk, so an interrupted save never leaves a half-written checkpoint under a real name.
On load the SHA-256 of every file is checked: a truncated or altered checkpoint raises
:class:`CheckpointError` naming the file, instead of resuming from garbage.

The random state needs no saving: the trainer derives every random draw of step ``s`` from
``(seed, stage, s)`` (see :func:`dwgf_sci.training.loop.step_generator`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import FileFormatError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "save_checkpoint",
]

#: Value of ``state.json["format"]``.
CHECKPOINT_FORMAT = "dwgf-sci-training-checkpoint"
#: Version of the checkpoint layout.
CHECKPOINT_VERSION = 1
_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")


class CheckpointError(FileFormatError):
    """A checkpoint is missing, incomplete, corrupt or belongs to another run."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    :param Path path: its folder.
    :param str stage: the training stage (``"vae"``, ``"unet"``, ...).
    :param int step: optimisation steps done in that stage.
    :param dict model: the module weights.
    :param dict ema: the EMA weights.
    :param dict optimizer: an optimizer ``state_dict``.
    :param dict state: the parsed ``state.json`` (history, extras, config, ...).
    """

    path: Path
    stage: str
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]


# ---------------------------------------------------------------------- optimizer state
def optimizer_state_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors (for safetensors) and JSON metadata.

    Tensors are detached, moved to the CPU and made contiguous; tuples in the param groups (e.g.
    Adam's ``betas``) become lists.

    :param state: an optimizer ``state_dict`` (``"state"`` and ``"param_groups"``).
    :return: ``(tensors, meta)``; tensors are keyed ``"state.<param id>.<name>"``, ``meta``
        holds the param groups and the non-tensor per-parameter values.
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_flat(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`optimizer_state_to_flat`.

    List values of the param groups, except ``params``, become tuples again.

    :param tensors: the tensors keyed ``"state.<param id>.<name>"``.
    :param meta: the metadata (``param_groups`` and ``scalars``).
    :return: an optimizer ``state_dict`` for ``optimizer.load_state_dict``, with int parameter
        ids.
    """
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = [
        {k: (v if k == "params" or not isinstance(v, list) else tuple(v)) for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - folders cannot be synced on every platform
        pass
    finally:
        os.close(fd)


def checkpoint_name(stage: str, step: int) -> str:
    """Folder name of the checkpoint of ``stage`` after ``step`` steps."""
    return f"{stage}-{int(step):08d}"


def list_checkpoints(folder: str | os.PathLike[str], stage: str) -> list[tuple[int, Path]]:
    """The checkpoints of ``stage`` in ``folder`` as ``(step, path)``, by increasing step.

    Temporary folders of unfinished saves are ignored. The checkpoints are not verified (see
    :func:`load_checkpoint`).

    :param folder: the checkpoints folder (a missing folder gives an empty list).
    :param stage: the stage name (``"vae"``, ``"unet"``, ...).
    :return: ``(step, folder)`` pairs of the ``<stage>-<step:08d>`` folders.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(stage)}-(\d{{8}})$")
    found = []
    for path in root.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    folder: str | os.PathLike[str],
    stage: str,
    step: int,
    model: Mapping[str, Tensor],
    ema: Mapping[str, Tensor],
    optimizer: Mapping[str, Any],
    state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically; keep only the ``keep`` latest of the stage.

    :param folder: the checkpoints folder (created if needed).
    :param str stage: stage name (letters, digits, ``-``/``_``).
    :param int step: steps done in the stage.
    :param model: module ``state_dict``.
    :param ema: EMA weights.
    :param optimizer: optimizer ``state_dict``.
    :param state: JSON-serialisable extras (history, unit map, config, ...).
    :param int keep: number of checkpoints of the stage to keep (>= 1).
    :return: the checkpoint folder.
    """
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(stage, step)
    tmp = root / f".tmp-{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = optimizer_state_to_flat(optimizer)
        for name, tensors in (
            ("model.safetensors", model),
            ("ema.safetensors", ema),
            ("optimizer.safetensors", opt_tensors),
        ):
            plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(plain, str(tmp / name))
            _fsync(tmp / name)
        record = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "stage": stage,
            "step": int(step),
            "optimizer": opt_meta,
            **dict(state),
            "files": {name: _sha256(tmp / name) for name in _FILES},
        }
        text = json.dumps(record, indent=1, allow_nan=True)
        (tmp / "state.json").write_text(text + "\n", encoding="utf-8")
        _fsync(tmp / "state.json")
        _fsync(tmp)
        if final.exists():
            trash = root / f".old-{final.name}-{secrets.token_hex(4)}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in list_checkpoints(root, stage)[: -max(1, int(keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Checkpoint:
    """Read and verify a checkpoint folder.

    :param path: the checkpoint folder (``<stage>-<step:08d>``).
    :param device: device the weights and optimizer tensors are loaded onto.
    :return: the :class:`Checkpoint`.
    :raises CheckpointError: missing files, invalid ``state.json``, a file whose SHA-256 does
        not match (corrupt or truncated), or unreadable safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    advice = (
        f"delete {folder} to resume from the previous checkpoint, or start over with --overwrite"
    )
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} has no state.json; {advice}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {state_path} is corrupt ({err}); {advice}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder} is not a dwgf-sci training checkpoint; {advice}")
    fields = {"version": int, "stage": str, "step": int, "optimizer": dict, "files": dict}
    for key, kind in fields.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint {state_path} is corrupt: {key!r} should be a {kind.__name__}, "
                f"found {value!r}; {advice}"
            )
    if state["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {folder} has format version {state.get('version')}; this dwgf-sci reads "
            f"up to version {CHECKPOINT_VERSION}"
        )
    digests = state["files"]
    loaded: dict[str, dict[str, Tensor]] = {}
    for name in _FILES:
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {folder} lacks {name}; {advice}")
        if _sha256(file) != digests.get(name):
            raise CheckpointError(
                f"checkpoint file {file} is corrupt (its SHA-256 does not match state.json); "
                f"{advice}"
            )
        try:
            loaded[name] = load_file(str(file), device=str(device))
        except (SafetensorError, OSError, RuntimeError) as err:  # pragma: no cover - hashed
            raise CheckpointError(f"cannot read {file}: {err}; {advice}") from None
    try:
        optimizer = optimizer_state_from_flat(loaded["optimizer.safetensors"], state["optimizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {folder}: invalid optimizer state ({err}); {advice}"
        ) from None
    return Checkpoint(
        path=folder,
        stage=str(state["stage"]),
        step=int(state["step"]),
        model=loaded["model.safetensors"],
        ema=loaded["ema.safetensors"],
        optimizer=optimizer,
        state=state,
    )


def remove_checkpoints(folder: str | os.PathLike[str]) -> None:
    """Delete a checkpoints folder (after a successful run)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
