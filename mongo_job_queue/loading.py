"""The app's job instance from a stored document: exactly what MongoEngine builds, for a fraction of its CPU.

MongoEngine's ``_from_son`` runs ``Document.__init__``, which assigns each of
BaseJob's forty-odd fields twice through its descriptors and ``__setattr__``:
about a sixth of a job's worker CPU at concurrency 1. :func:`load_job`
builds the same instance state directly: each present field converted by
the field's own ``to_python``, each absent one given the default
``BaseField.__set__`` would give it, embedded documents tied to their parent,
the ``get_<field>_display`` methods of choice fields.

A model gets the direct build only when it cannot tell the difference: no
``__init__``, ``_from_son`` or ``__setattr__`` of its own, not dynamic, not
inherited (``_cls``), strict, no field with a ``__get__``/``__set__`` of its own (FileField,
ComplexDateTimeField, an app field normalising what is assigned), no init signal receivers, and only keys it
declares in the document. Even then the build is checked once per model,
against ``_from_son`` on that model's first document; any difference (a
MongoEngine release that builds documents another way) turns the direct
build off for that model, and every document goes through ``_from_son``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Optional, TypeVar

from bson import SON
from mongoengine import Document, EmbeddedDocument, signals
from mongoengine.base import BaseDocument, BaseField, ComplexBaseField
from mongoengine.fields import (
    BinaryField,
    CachedReferenceField,
    EmbeddedDocumentField,
    EnumField,
    GenericLazyReferenceField,
    GenericReferenceField,
    LazyReferenceField,
    ListField,
    ReferenceField,
)

__all__ = ["load_job", "loads_directly"]

log = logging.getLogger(__name__)

D = TypeVar("D", bound=BaseDocument)

#: "No such attribute", in :func:`_state` (None is a value an attribute can hold).
_ABSENT = object()


def _default_of(field: Any) -> Callable[[], Any]:
    """What ``BaseField.__set__`` stores for an absent field: None if nullable, else its default (called)."""
    default = field.default
    if field.null or default is None:
        return lambda: None
    if callable(default):
        return default  # type: ignore[no-any-return]
    return lambda: default


#: The values that can hold an embedded document (checked before calling :func:`_tie`, the hot path).
_HOLDERS = (EmbeddedDocument, list, tuple)


def _tie(value: Any, parent: BaseDocument) -> None:
    """Point embedded documents at their parent, as ``BaseField.__set__`` does."""
    if isinstance(value, EmbeddedDocument):
        value._instance = weakref.proxy(parent)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, EmbeddedDocument):
                item._instance = weakref.proxy(parent)


class _Plan:
    """The direct build of one document class: its fields' defaults and converters, worked out once."""

    def __init__(self, cls: type[BaseDocument]) -> None:
        self.cls = cls
        self.embedded = issubclass(cls, EmbeddedDocument)
        self.keys = frozenset(f.db_field for f in cls._fields.values())
        self.choices = [(name, f) for name, f in cls._fields.items() if f.choices]
        self.class_name = cls._class_name
        #: Every field's default when it is a constant, None for the others: copied, in field order, per build.
        self.template: dict[str, Any] = {}
        #: The fields whose default is made per instance (``list``, ``dict``, a callable), or may hold a document.
        self.factories: list[tuple[str, str, Callable[[], Any]]] = []
        #: Per stored key: the field's name, the field, its default and, for an embedded document, the field again.
        self.by_key: dict[str, tuple[str, Any, Callable[[], Any], Any]] = {}
        for name, f in cls._fields.items():
            default = _default_of(f)
            constant = not (callable(f.default) and not f.null)
            value = default() if constant else None
            self.template[name] = None if isinstance(value, _HOLDERS) else value
            if not constant or isinstance(value, _HOLDERS):
                self.factories.append((name, f.db_field, default))
            nested = f if isinstance(f, EmbeddedDocumentField) else None
            self.by_key[f.db_field] = (name, f, default, nested)

    def build(self, son: Mapping[str, Any]) -> Any:
        """The instance ``cls._from_son(son)`` returns (the caller checked the keys)."""
        cls: Any = self.cls
        obj = cls.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(obj, "_initialised", False)
        setattr_(obj, "_created", True)
        data = dict(self.template)
        setattr_(obj, "_data", data)
        setattr_(obj, "_dynamic_fields", SON())
        for name, db_field, default in self.factories:
            if db_field not in son:
                value = default()
                if isinstance(value, _HOLDERS):
                    _tie(value, obj)
                data[name] = value
        setattr_(obj, "_cls", self.class_name)
        by_key = self.by_key
        for key, value in son.items():
            name, field, default, nested = by_key[key]
            if value is None:
                value = default()
            elif nested is not None and type(value) is dict and nested._auto_dereference:
                value = _loader(nested.document_type).load(value)
            else:
                value = field.to_python(value)
            if isinstance(value, _HOLDERS):
                _tie(value, obj)
            data[name] = value
        for name, field in self.choices:
            setattr_(obj, f"get_{name}_display", partial(obj._BaseDocument__get_field_display, field=field))
        setattr_(obj, "_initialised", True)
        setattr_(obj, "_created", False)
        if self.embedded:
            setattr_(obj, "_instance", None)
        setattr_(obj, "_changed_fields", [])
        return obj

    def made_by_callables(self, son: Mapping[str, Any]) -> frozenset[str]:
        """The absent fields whose default is a callable other than a plain container type (see :func:`_state`)."""
        return frozenset(
            name
            for name, db_field, _ in self.factories
            if db_field not in son and self.cls._fields[name].default not in (list, dict)
        )

    def accepts(self, son: Mapping[str, Any]) -> bool:
        """Whether ``son`` holds only declared fields and no init signal listens: else ``_from_son`` decides."""
        return son.keys() <= self.keys and not _signalled()


#: The field descriptors under which the direct build holds what ``__init__`` stores: each ``__set__`` stores
#: a converted value as is (EnumField and ComplexBaseField convert again, idempotently), and each ``__get__``
#: gives None for an absent field without storing anything. Others (FileField's proxy for an absent file,
#: ComplexDateTimeField's string, an app field normalising what is assigned) take ``_from_son``: their
#: difference shows on some documents only, which the verification of one document cannot catch.
_PLAIN_SETS = frozenset({BaseField.__set__, ComplexBaseField.__set__, EnumField.__set__, BinaryField.__set__})
_PLAIN_GETS = frozenset(
    {
        BaseField.__get__,
        ComplexBaseField.__get__,
        ListField.__get__,
        ReferenceField.__get__,
        CachedReferenceField.__get__,
        GenericReferenceField.__get__,
        LazyReferenceField.__get__,
        GenericLazyReferenceField.__get__,
    }
)


def _signalled() -> bool:
    """Whether an init signal has receivers (never without blinker, which MongoEngine does not require)."""
    if not signals.signals_available:
        return False
    return bool(signals.pre_init.receivers or signals.post_init.receivers)


def _eligible(cls: type[BaseDocument]) -> Optional[str]:
    """Why ``cls`` must be built by ``_from_son``; None if it can be built directly."""
    base = EmbeddedDocument if issubclass(cls, EmbeddedDocument) else BaseDocument
    if not issubclass(cls, (Document, EmbeddedDocument)):
        return "not a MongoEngine document"
    if cls.__init__ is not base.__init__:
        return "its own __init__"
    if cls._from_son.__func__ is not BaseDocument._from_son.__func__:
        return "its own _from_son"
    if cls.__setattr__ is not BaseDocument.__setattr__:
        return "its own __setattr__"
    if cls._dynamic or not cls._meta.get("strict", True):
        return "dynamic or not strict"
    if cls.STRICT:
        return "its data is a StrictDict"
    if cls._meta.get("allow_inheritance"):
        return "inheritance (_cls)"
    for name, field in cls._fields.items():
        kind = type(field)
        if kind.__set__ not in _PLAIN_SETS or kind.__get__ not in _PLAIN_GETS:
            return f"field {name!r} ({kind.__name__}) has its own __set__ or __get__"
    return None


def _state(doc: Any, parent: Any = None, made: frozenset[str] = frozenset()) -> Any:
    """Everything an instance holds, as comparable values (partials by function and field, parents by identity).

    ``made`` names the fields whose value a callable default made for this
    instance (``datetime.utcnow``, ``uuid4``): two builds call it twice, so
    only its type is compared.
    """
    if not isinstance(doc, BaseDocument):
        if isinstance(doc, (list, tuple)):
            return (type(doc), [_state(v, parent) for v in doc])
        if isinstance(doc, dict):
            return (type(doc), {k: _state(v, parent) for k, v in doc.items()})
        return (type(doc), doc)
    attrs = {
        name: getattr(doc, name, _ABSENT) for name in ("_initialised", "_created", "_changed_fields", "_dynamic_fields")
    }
    extra = {}
    for name, value in vars(doc).items() if hasattr(doc, "__dict__") else ():
        if isinstance(value, partial):
            extra[name] = (value.func.__name__, value.keywords)
        elif name != "_instance":
            extra[name] = _state(value, doc)
    instance: Any = getattr(doc, "_instance", _ABSENT)
    tied = instance is _ABSENT or (instance is None and parent is None)
    if not tied and instance is not None and parent is not None:
        tied = instance._data is parent._data
    return (
        type(doc),
        attrs,
        extra,
        tied,
        {k: (type(v), "made") if k in made else _state(v, doc) for k, v in doc._data.items()},
    )


class _Loader:
    """The loading of one model: direct once verified, ``_from_son`` otherwise."""

    def __init__(self, cls: type[BaseDocument]) -> None:
        self.cls = cls
        reason = _eligible(cls)
        self.plan: Optional[_Plan] = _Plan(cls) if reason is None else None
        self.verified = False
        if reason is not None:
            log.debug("%s is loaded with _from_son: %s", cls.__name__, reason)

    def load(self, son: Mapping[str, Any]) -> Any:
        """``cls._from_son(son)``, or its direct build once verified."""
        plan = self.plan
        if plan is None or not plan.accepts(son):
            return self.cls._from_son(son)
        if self.verified:
            try:
                return plan.build(son)
            except Exception:  # noqa: BLE001 - a value its field refuses: _from_son raises its own error for it
                return self.cls._from_son(son)
        # No lock: a build loads its embedded documents through their loaders, which verify too, and an
        # embedded document may hold its own class (a tree) or another that holds it: a lock held here would
        # be taken again by the same thread, or by two threads in opposite orders. Concurrent verifications
        # only repeat the work; one that differs turns the direct build off for good, whatever the others found.
        expected = self.cls._from_son(son)
        try:
            built = plan.build(son)
            made = plan.made_by_callables(son)
            same = _state(built, made=made) == _state(expected, made=made)
        except Exception:  # noqa: BLE001 - a build (or comparison) that fails where _from_son did not: it differs
            same = False
        if same:
            self.verified = True
        else:
            self.plan = None
            log.info("%s is loaded with _from_son: the direct build differs from it", self.cls.__name__)
        return expected


_LOADERS: weakref.WeakKeyDictionary[type, _Loader] = weakref.WeakKeyDictionary()
_LOADERS_LOCK = threading.Lock()


def _loader(model: type[BaseDocument]) -> _Loader:
    loader = _LOADERS.get(model)
    if loader is None:
        with _LOADERS_LOCK:
            loader = _LOADERS.get(model)
            if loader is None:
                loader = _LOADERS[model] = _Loader(model)
    return loader


def load_job(model: type[D], son: Mapping[str, Any]) -> D:
    """``model._from_son(son)``, built directly when that gives the very same instance (see the module)."""
    if not isinstance(son, dict):
        return model._from_son(son)  # type: ignore[no-any-return]  # its own error for what is not a dict
    return _loader(model).load(son)  # type: ignore[no-any-return]


def loads_directly(model: type[BaseDocument]) -> bool:
    """Whether ``model``'s documents are built directly (after its first one); for tests."""
    loader = _loader(model)
    return loader.plan is not None
