"""``typing.NamedTuple`` for the spawn helper, without typing or collections.

The spawn helper loads this (helper.py says why every MB it maps counts): ``class
X(NamedTuple)`` is a tuple whose fields are named by the annotations, with defaults
from the values, and whose other attributes (methods) are kept. Type checkers see
typing's own.
"""

from __future__ import annotations

from _operator import itemgetter

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple
else:

    class _NamedTupleMeta(type):
        """``class X(NamedTuple)`` as typing has it: a tuple whose fields are named
        by the annotations, with defaults from the values. Made here rather than by
        collections.namedtuple: collections would add ~0.4 MB to the spawn helper."""

        def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, ns)
            fields = tuple(ns.get("__annotations__", {}))  # type: ignore[arg-type]
            defaults = {f: ns[f] for f in fields if f in ns}

            def __new__(cls: type, *args: object, **kwargs: object) -> tuple[object, ...]:
                values = list(args[: len(fields)])
                for f in fields[len(values) :]:
                    if f in kwargs:
                        values.append(kwargs.pop(f))
                    elif f in defaults:
                        values.append(defaults[f])
                    else:
                        raise TypeError(f"{name}() missing argument {f!r}")
                if kwargs or len(args) > len(fields):
                    raise TypeError(f"{name}() got unexpected arguments")
                return tuple.__new__(cls, values)  # type: ignore[type-var]

            index = {f: i for i, f in enumerate(fields)}

            def _replace(self: tuple[object, ...], **changes: object) -> tuple[object, ...]:
                # in place of the fields named: a list copy, not a dict and a call
                # through __new__ (a spawn replaces two per container)
                values = list(self)
                for f, value in changes.items():
                    i = index.get(f)
                    if i is None:
                        raise TypeError(f"{name}._replace() got an unexpected field {f!r}")
                    values[i] = value
                return tuple.__new__(type(self), values)  # type: ignore[type-var]

            def __repr__(self: tuple[object, ...]) -> str:
                return f"{name}({', '.join(f'{f}={v!r}' for f, v in zip(fields, self, strict=True))})"

            def __getnewargs__(self: tuple[object, ...]) -> tuple[object, ...]:
                return tuple(self)  # pickle: X(*fields), not X(tuple)

            body: dict[str, object] = {
                "__slots__": (),
                "__new__": __new__,
                "__doc__": ns.get("__doc__"),
                "__module__": ns["__module__"],
                "__qualname__": ns.get("__qualname__", name),
                "_fields": fields,
                "_make": classmethod(tuple.__new__),
                "_replace": _replace,
                "__repr__": __repr__,
                "__getnewargs__": __getnewargs__,
            }
            for key, value in ns.items():  # methods and class attributes
                if key not in fields and not key.startswith("__"):
                    body[key] = value
            for i, f in enumerate(fields):
                body[f] = property(itemgetter(i))
            return type(name, (tuple,), body)

    class NamedTuple(metaclass=_NamedTupleMeta):
        pass
