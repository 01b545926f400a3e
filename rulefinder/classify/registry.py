"""The model registry: named models on disk, loaded safely, every one with a content hash.

Where models live:

* the package ships read-only models under ``rulefinder/classify/models/<name>/`` (``default``);
* models published by the pipeline (or by you) live under ``RULEFINDER_DATA_DIR/models/<name>/``.
  Registering a name that exists is an error unless ``replace=True``; that includes ``default``,
  so a data-directory model shadows the packaged one only when asked to, and the packaged files
  are never written.

A model directory holds ``card.json`` (:class:`~rulefinder.classify.card.ModelCard`), the
scikit-learn parts as ``estimator.skops`` and, when the estimator has a torch part, its weights
as ``tensors.safetensors`` plus ``tensors.json`` (its configuration). Nothing is ever pickled:

* skops loads only the types the estimator class names in ``trusted_types()`` (an explicit
  list); a file holding any other type is refused before anything in it is constructed;
* the estimator class itself is named by the card and must live in ``rulefinder.classify``;
* the card lists each file's sha256, checked before loading: a changed file is refused.

The model's sha256 (:func:`~rulefinder.classify.card.card_sha256`) is the hash of the card's
canonical JSON, which lists every file's hash; a prediction names ``{"name", "sha256"}``.

An estimator with a torch part implements ``tensor_parts() -> (dict[str, np.ndarray], dict)``
(weights as numpy arrays, JSON configuration) and ``load_tensor_parts(tensors, config)``, and
leaves those weights out of what skops sees (e.g. through ``__getstate__``).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shutil
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rulefinder.classify.card import ModelCard, card_sha256, file_sha256
from rulefinder.classify.result import ModelRef

log = logging.getLogger(__name__)

#: The read-only models that ship inside the package.
PACKAGED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "default"
CARD_FILE = "card.json"
ESTIMATOR_FILE = "estimator.skops"
TENSORS_FILE = "tensors.safetensors"
TENSORS_CONFIG_FILE = "tensors.json"
#: Modules an estimator class named by a card may come from: a card cannot make us import
#: (and trust the types of) arbitrary code.
TRUSTED_ESTIMATOR_MODULES: tuple[str, ...] = ("rulefinder.classify.",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class ModelError(ValueError):
    """A model cannot be registered or loaded (the message says which file and why)."""


class ModelNotFoundError(ModelError, LookupError):
    """No model of that name."""


class ModelExistsError(ModelError):
    """A model of that name is registered already (pass ``replace=True``)."""


class ModelIntegrityError(ModelError):
    """A model file does not match its card, or holds types that are not trusted."""


@dataclass(frozen=True)
class ModelEntry:
    """One model the registry knows, without loading it."""

    name: str
    card: ModelCard
    sha256: str
    path: Path
    read_only: bool

    @property
    def source(self) -> str:
        return "package" if self.read_only else "data_dir"


@dataclass
class LoadedModel:
    """A loaded model: the fitted estimator, its card, its name and content hash."""

    estimator: Any
    card: ModelCard
    name: str
    sha256: str
    path: Path
    read_only: bool

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, sha256=self.sha256)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModelError(
            f"model name {name!r}: expected letters, digits, '_', '.', '-' (starting with a letter or digit, at most 100 characters)"
        )
    return name


def _estimator_class(qualname: str, where: Path) -> type:
    if not any(qualname.startswith(m) for m in TRUSTED_ESTIMATOR_MODULES):
        raise ModelIntegrityError(
            f"{where}: field 'estimator' is {qualname!r}: expected a class in {', '.join(TRUSTED_ESTIMATOR_MODULES)}"
        )
    module, _, cls_name = qualname.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{where}: field 'estimator' is {qualname!r}, which this rulefinder does not have ({exc})") from None
    if not callable(getattr(cls, "trusted_types", None)):
        raise ModelIntegrityError(f"{where}: estimator class {qualname} has no trusted_types(): cannot load it safely")
    return cls


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_card(path: Path) -> ModelCard:
    """Parse ``card.json`` with an error naming the file and the field."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: no model card (expected {CARD_FILE})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"{path}: not a JSON model card ({exc})") from None
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(card)"
        raise ModelIntegrityError(f"{path}: field {field!r}: {first['msg']} (found {first.get('input')!r:.80})") from None


class ModelRegistry:
    """Named models: packaged read-only ones plus those under ``data_dir`` (default:
    ``Settings().data_dir / "models"``)."""

    def __init__(self, data_dir: Path | None = None, packaged_dir: Path | None = PACKAGED_DIR):
        if data_dir is None:
            from rulefinder.settings import Settings

            data_dir = Settings().data_dir / "models"
        self.data_dir = Path(data_dir)
        self.packaged_dir = Path(packaged_dir) if packaged_dir is not None else None

    # -- finding -------------------------------------------------------------------------

    def _dirs(self) -> list[tuple[Path, bool]]:
        """Model directories, data directory first (it shadows packaged names, by explicit replace only)."""
        roots = [(self.data_dir, False)]
        if self.packaged_dir is not None:
            roots.append((self.packaged_dir, True))
        return roots

    def _locate(self, name: str) -> tuple[Path, bool]:
        _check_name(name)
        for root, read_only in self._dirs():
            if (root / name / CARD_FILE).is_file():
                return root / name, read_only
        raise ModelNotFoundError(f"no model named {name!r}; registered: {', '.join(self.names()) or '(none)'}")

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for root, _ in self._dirs():
            if root.is_dir():
                for d in sorted(root.iterdir()):
                    if (d / CARD_FILE).is_file() and not d.name.startswith("."):
                        seen.setdefault(d.name, None)
        return list(seen)

    def entry(self, name: str) -> ModelEntry:
        path, read_only = self._locate(name)
        card = read_card(path / CARD_FILE)
        return ModelEntry(name=name, card=card, sha256=card_sha256(card), path=path, read_only=read_only)

    def entries(self) -> list[ModelEntry]:
        """Every model, without loading estimators; a model whose card is broken is logged and skipped."""
        out = []
        for name in self.names():
            try:
                out.append(self.entry(name))
            except ModelError as exc:
                log.warning("skipping model %s: %s", name, exc)
        return out

    def list(self) -> list[ModelCard]:
        return [e.card for e in self.entries()]

    # -- loading -------------------------------------------------------------------------

    def verify(self, name: str) -> ModelEntry:
        """Check every file of the model against the sha256 its card lists."""
        entry = self.entry(name)
        _verify_files(entry.path, entry.card)
        return entry

    def load(self, name: str = DEFAULT_MODEL) -> LoadedModel:
        """Load a model after checking its files against its card and its types against the
        estimator's trusted-types list. Raises :class:`ModelError` subclasses with the file named."""
        entry = self.verify(name)
        estimator = _load_estimator(entry.path, entry.card)
        return LoadedModel(estimator, entry.card, name, entry.sha256, entry.path, entry.read_only)

    # -- writing -------------------------------------------------------------------------

    def register(self, estimator: Any, card: ModelCard, name: str | None = None, replace: bool = False) -> ModelRef:
        """Save ``estimator`` with ``card`` as model ``name`` (default: the card's name) under the
        data directory. A taken name is an error unless ``replace``; packaged files are never written."""
        name = _check_name(name or card.name)
        target = self.data_dir / name
        taken = [str(root / name) for root, _ in self._dirs() if (root / name / CARD_FILE).is_file()]
        if taken and not replace:
            raise ModelExistsError(f"a model named {name!r} exists ({taken[0]}); pass replace=True (--replace) to replace it")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            card = write_model(tmp, estimator, card.model_copy(update={"name": name}))
            old = None
            if target.exists():
                old = self.data_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
                target.rename(old)
            tmp.rename(target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return ModelRef(name=name, sha256=card_sha256(card))

    def remove(self, name: str) -> None:
        path, read_only = self._locate(name)
        if read_only:
            raise ModelError(f"model {name!r} ships with the package ({path}) and is read-only")
        shutil.rmtree(path)


def write_model(directory: Path, estimator: Any, card: ModelCard) -> ModelCard:
    """Write ``estimator`` and ``card`` into ``directory`` (created); returns the card as written
    (estimator class, file hashes filled in). Refuses an estimator that would not load back."""
    import skops.io as sio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=False)
    qualname = _qualname(estimator)
    cls = _estimator_class(qualname, directory / CARD_FILE)
    trusted = set(cls.trusted_types())
    # Deflate: tree arrays and the skops schema compress several-fold.
    data = sio.dumps(estimator, compression=zipfile.ZIP_DEFLATED, compresslevel=6)
    untrusted = sorted(set(sio.get_untrusted_types(data=data)) - trusted)
    if untrusted:
        raise ModelIntegrityError(
            f"{qualname}: the fitted estimator holds types missing from its trusted_types(): {untrusted}; "
            "add them there (only types that cannot run code on load) or the model would not load"
        )
    (directory / ESTIMATOR_FILE).write_bytes(data)
    if callable(getattr(estimator, "tensor_parts", None)):
        from safetensors.numpy import save_file

        tensors, config = estimator.tensor_parts()
        save_file({k: _contiguous(v) for k, v in tensors.items()}, str(directory / TENSORS_FILE))
        (directory / TENSORS_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.name != CARD_FILE}
    card = card.model_copy(update={"estimator": qualname, "files": files})
    card = ModelCard.model_validate(card.model_dump())  # re-validate (labels vs catalogue ...)
    (directory / CARD_FILE).write_text(card.to_json())
    return card


def _contiguous(a):
    import numpy as np

    return np.ascontiguousarray(a)


def _verify_files(path: Path, card: ModelCard) -> None:
    if ESTIMATOR_FILE not in card.files:
        raise ModelIntegrityError(f"{path / CARD_FILE}: field 'files' does not list {ESTIMATOR_FILE}")
    for fname, expected in card.files.items():
        f = path / fname
        if "/" in fname or "\\" in fname or fname.startswith("."):
            raise ModelIntegrityError(f"{path / CARD_FILE}: field 'files' names {fname!r}: expected a plain file name")
        if not f.is_file():
            raise ModelIntegrityError(f"{f}: missing (the card lists it with sha256 {expected[:12]}...)")
        found = file_sha256(f)
        if found != expected:
            raise ModelIntegrityError(
                f"{f}: sha256 is {found[:12]}..., expected {expected[:12]}... from {CARD_FILE}: the file was changed or replaced"
            )
    unlisted = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != CARD_FILE and p.name not in card.files)
    if unlisted:
        raise ModelIntegrityError(f"{path}: files not listed in {CARD_FILE}: {unlisted}")


def _load_estimator(path: Path, card: ModelCard) -> Any:
    import skops.io as sio

    cls = _estimator_class(card.estimator, path / CARD_FILE)
    trusted = list(cls.trusted_types())
    f = path / ESTIMATOR_FILE
    data = f.read_bytes()
    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(trusted))
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"{f}: not a skops file ({type(exc).__name__}: {exc}); models are never unpickled") from None
    if untrusted:
        raise ModelIntegrityError(f"{f}: holds types that {card.estimator}.trusted_types() does not allow: {untrusted}")
    try:
        estimator = sio.loads(data, trusted=trusted)
    except Exception as exc:  # skops raises many kinds on a damaged file
        raise ModelIntegrityError(f"{f}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(estimator, cls):
        raise ModelIntegrityError(f"{f}: holds a {_qualname(estimator)}, expected {card.estimator}")
    if (path / TENSORS_FILE).is_file():
        from safetensors.numpy import load_file

        config = json.loads((path / TENSORS_CONFIG_FILE).read_text()) if (path / TENSORS_CONFIG_FILE).is_file() else {}
        try:
            tensors = load_file(str(path / TENSORS_FILE))
        except Exception as exc:
            raise ModelIntegrityError(f"{path / TENSORS_FILE}: not a safetensors file ({exc})") from None
        estimator.load_tensor_parts(tensors, config)
    return estimator


# -- module-level conveniences -----------------------------------------------------------

_cache: dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def get_registry() -> ModelRegistry:
    """The registry for the current settings (``RULEFINDER_DATA_DIR``)."""
    return ModelRegistry()


def load_model(name: str = DEFAULT_MODEL, registry: ModelRegistry | None = None) -> LoadedModel:
    """Load a model once per process; reloaded when its card changes on disk (a replace)."""
    registry = registry or get_registry()
    path, _ = registry._locate(name)
    st = (path / CARD_FILE).stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    model = registry.load(name)
    with _cache_lock:
        _cache[key] = model
    return model
