"""The one value-equality policy of the project.

A value of the language is an integer, a number, a truth value or a symbol, and each is
its own kind: `3`, `3.0`, `true` and `"3"` are four different values (docs/language.md:
"`3` and `3.0` are different values"; a set may list `3` and `3.0` both). Python's `==`
and dict keys conflate `3`, `3.0` and `True`, so code that compares or keys decision and
feature values goes through `value_key` / `same_value` here, never through bare `==`.

Reading a value written outside the language is another matter: JSON has one number type,
so `find_value` accepts `4.0` for a domain's integer `4` (and `3` for `3.0`) and returns
the domain's own value. Arithmetic comparisons inside expressions (`a == b` in a rule)
compare numbers by magnitude, as arithmetic does; that is the `==` operator, not identity.
"""

from __future__ import annotations

from collections.abc import Iterable

from autobuild_dsl.space.expr import Value

ValueKey = tuple[str, Value]


def value_key(value: object) -> ValueKey:
    """A hashable key equal for equal values only: 3, 3.0, True and "3" all differ."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", value)
    return ("s", str(value))


def same_value(a: object, b: object) -> bool:
    """Equal as values of the language: 3 == 3 and 2.5 == 2.5, but 3 != 3.0 and True != 1."""
    return type(a) is type(b) and a == b


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def find_value(domain: Iterable[Value], value: object) -> Value | None:
    """The domain's own value that `value` spells: the same value, or else (JSON input has
    one number type) the number of equal magnitude. None when there is none."""
    domain = domain if isinstance(domain, list) else list(domain)
    kind = type(value)
    for candidate in domain:  # same_value, inlined: this runs for every choice validated
        if type(candidate) is kind and candidate == value:
            return candidate
    if _is_number(value):
        for candidate in domain:
            if _is_number(candidate) and candidate == value:
                return candidate
    return None
