"""The batch form of a per-device hook implementation, for the built-in rules.

`passthrough_verdict` and `passthrough_affected` are called once per device and implementation;
at 20,000 devices the calls and the checks around them cost more than the rules. A built-in
implementation marked with `batched(batch)` is asked once per refresh instead: `batch(inventory,
settings, facts)` returns every device's answer by name (a name left out answers None), which
the inspector uses in the implementation's place in the hook order. If the batch raises, the
implementation is called device by device as usual, so a failure is contained as before.
Third-party plugins keep the per-device hooks; the answers of a batch are taken as well formed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .facts import Facts
    from ..model import Inventory
    from ..settings import Settings

BATCH = "passthrough_batch"  # the attribute that holds an implementation's batch form

F = TypeVar("F", bound=Callable[..., Any])
Batch = Callable[["Inventory", "Settings", "Facts"], Mapping[str, Any]]


def batched(batch: Batch) -> Callable[[F], F]:
    """Mark a per-device hook implementation with its batch form."""
    def mark(function: F) -> F:
        setattr(function, BATCH, batch)
        return function
    return mark
