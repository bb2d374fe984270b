"""The configuration reference, generated from :class:`~mongo_job_queue.QueueConfig`.

``.. queue-config-table::`` (in docs/configuration.rst) renders one row per
field of the dataclass: its name, its default, and its description from the
``Attributes`` section of QueueConfig's docstring. That docstring is the one
place a setting is described, so the docs cannot drift from the code: a field
without a description, or a description of no field, fails the docs build.

The table itself (:func:`table_lines`) needs no Sphinx, so a unit test checks
it without the docs extra installed; Sphinx is imported by :func:`setup` only.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

#: ``name: text`` at the first indentation level of a Google-style section.
_ENTRY = re.compile(r"^ {4}(\w+): (.*)$")
#: Exact units a default is also shown in, largest first.
_DURATIONS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000))
_SIZES = (("MiB", 1024 * 1024), ("KiB", 1024))


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of ``cls``'s docstring, by name, each joined into one line of reST."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        raise ValueError(f"{cls.__name__}'s docstring has no 'Attributes:' section")
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        match = _ENTRY.match(line)
        if match:
            current = entries.setdefault(match.group(1), [])
            current.append(match.group(2))
        elif current is not None and line.strip():
            current.append(line.strip())
    return {name: " ".join(parts) for name, parts in entries.items()}


def shown_default(name: str, value: Any) -> str:
    """A default as reST: its repr, plus the exact unit a duration or a size reads best in."""
    text = f"``{value!r}``"
    units = _DURATIONS if name.endswith("_ms") else _SIZES if name.endswith("_bytes") else ()
    if isinstance(value, int) and not isinstance(value, bool) and value:
        for unit, size in units:
            if value % size == 0:
                return f"{text} ({value // size} {unit})"
    return text


def rows(cls: type) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for every field of the dataclass ``cls``, in field order.

    Raises:
        ValueError: a field has no description, or a description names no field.
    """
    described = attribute_docs(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    missing = [n for n in names if n not in described]
    unknown = [n for n in described if n not in names]
    if missing or unknown:
        raise ValueError(
            f"{cls.__name__}'s docstring and fields disagree: undescribed {missing}, described but no field {unknown}"
        )
    table = []
    for f in fields:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        derived = type(default).__name__ == "Derived"  # config.Derived: taken from another setting unless set
        shown = shown_default(f.name, default) + (", derived" if derived else "")
        table.append((f.name, shown, described[f.name]))
    return table


def table_lines(cls: type) -> list[str]:
    """The reST ``list-table`` of :func:`rows`."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 26 18 56",
        "",
        "   * - Key",
        "     - Default",
        "     - Meaning",
    ]
    for name, default, meaning in rows(cls):
        lines += [f"   * - ``{name}``", f"     - {default}", f"     - {meaning}"]
    return lines


def setup(app: Any) -> dict[str, Any]:
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class QueueConfigTable(SphinxDirective):
        """``.. queue-config-table::``: the table of QueueConfig's keys, defaults and meanings."""

        def run(self) -> list[nodes.Node]:
            from mongo_job_queue.config import QueueConfig

            source = inspect.getsourcefile(QueueConfig)
            if source:
                self.env.note_dependency(source)  # a changed docstring rebuilds the page
            container = nodes.container()
            self.state.nested_parse(StringList(table_lines(QueueConfig), source=str(source)), 0, container)
            return list(container.children)

    app.add_directive("queue-config-table", QueueConfigTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
