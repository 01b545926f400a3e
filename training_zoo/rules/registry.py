"""The rule registry: stable string id -> rule class, open to other packages.

Other packages add rules through the ``rulefinder.rules`` entry-point group, e.g. in their
pyproject: ``[project.entry-points."rulefinder.rules"] my_rule = "my_pkg.rules:MyRule"``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from rulefinder.vocabulary import FAMILIES
from training_zoo.rules.base import LearningRule


_RULES: dict[str, type[LearningRule]] = {}
_entry_points_loaded = False


def register(cls: type[LearningRule]) -> type[LearningRule]:
    """Class decorator: add ``cls`` under ``cls.id``. A second class with the same id is an error."""
    if not cls.id:
        raise ValueError(f"{cls.__name__} has no id")
    if "default" not in cls.variants:
        raise ValueError(f"{cls.__name__}.variants has no 'default' variant")
    if cls.family not in FAMILIES:
        raise ValueError(f"{cls.__name__}.family {cls.family!r} is not one of {FAMILIES}")
    existing = _RULES.get(cls.id)
    if existing is not None and existing is not cls:
        raise ValueError(f"rule id {cls.id!r} is taken by {existing.__module__}.{existing.__name__}")
    _RULES[cls.id] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    import training_zoo.rules  # noqa: F401  (registers the built-in rules)

    for ep in entry_points(group="rulefinder.rules"):
        register(ep.load())


def get_rule(rule_id: str) -> type[LearningRule]:
    _load_entry_points()
    try:
        return _RULES[rule_id]
    except KeyError:
        raise KeyError(f"unknown rule {rule_id!r}; known: {', '.join(sorted(_RULES))}") from None


def all_rules() -> dict[str, type[LearningRule]]:
    _load_entry_points()
    return dict(sorted(_RULES.items()))


def catalogue() -> list[dict]:
    """One dict per rule: id, family, description, reference, supported architectures, variants."""
    return [
        {
            "id": cls.id,
            "family": cls.family,
            "description": cls.description,
            "reference": cls.reference,
            "architectures": list(cls.supports),
            "variants": [
                {"id": name, "description": v.description, "kwargs": dict(v.kwargs)}
                for name, v in cls.variants.items()
            ],
        }
        for cls in all_rules().values()
    ]
