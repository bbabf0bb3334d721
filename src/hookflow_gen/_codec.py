"""JSON codecs for payloads, step results and events, built on pydantic.

One ``TypeAdapter`` per declared type, cached. A fresh step result is
validated against its declared type, dumped to JSON for the journal, and then
decoded from that JSON exactly as a replayed result is, so a workflow sees the
same values on both paths. JSON only: never pickle, and no class is ever
looked up by a name found in stored data.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
import weakref
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core
from pydantic import TypeAdapter

from .exceptions import PayloadValidationError, WorkflowDefinitionError

__all__ = ["adapter_for", "decode", "encode", "return_adapter"]


@functools.lru_cache(maxsize=1024)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def adapter_for(tp: Any) -> TypeAdapter[Any]:
    """The (cached) TypeAdapter for ``tp``; a clear error if pydantic can't build one."""
    try:
        return _cached_adapter(tp)
    except TypeError:  # unhashable annotation: build one uncached
        return TypeAdapter(tp)
    except pydantic.PydanticSchemaGenerationError as exc:
        raise WorkflowDefinitionError(
            f"cannot serialise values of type {tp!r} as JSON: {exc}"
        ) from exc


_ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)
_return_adapters: weakref.WeakKeyDictionary[Callable[..., Any], TypeAdapter[Any]] = (
    weakref.WeakKeyDictionary()
)


def return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    """The adapter for ``fn``'s declared return type (``async def`` unwrapped).

    A function without a return annotation gets an ``Any`` adapter: its result
    must still be JSON-able, but it reaches the workflow as plain JSON data.
    """
    try:
        return _return_adapters[fn]
    except (KeyError, TypeError):
        pass
    target = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # a forward reference that cannot be resolved, ...
        name = getattr(target, "__qualname__", repr(target))
        raise WorkflowDefinitionError(
            f"cannot read the return annotation of step function {name}: {exc}"
        ) from exc
    adapter = adapter_for(hints["return"]) if "return" in hints else _ANY_ADAPTER
    with contextlib.suppress(TypeError):  # not weak-referenceable (a builtin): no cache
        _return_adapters[fn] = adapter
    return adapter


def encode(adapter: TypeAdapter[Any], value: object, *, what: str) -> str:
    """Validate ``value`` against the adapter's type and dump it to JSON text."""
    try:
        checked = adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise PayloadValidationError(f"{what} does not match its declared type: {exc}") from exc
    try:
        # "error": a value built without validation (model_construct) that does not
        # fit its type is refused here, not stored to fail every later replay.
        return adapter.dump_json(checked, warnings="error").decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise PayloadValidationError(f"{what} cannot be serialised as JSON: {exc}") from exc


def decode(adapter: TypeAdapter[Any], data: str | bytes, *, what: str) -> Any:
    """Decode JSON text with the adapter; a clear error if it no longer fits."""
    try:
        return adapter.validate_json(data)
    except pydantic.ValidationError as exc:
        raise PayloadValidationError(f"{what} does not match its declared type: {exc}") from exc
