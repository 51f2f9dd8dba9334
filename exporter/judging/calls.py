"""Calling rule plugins, and containing the ones that fail: the one place that does both.

Every hook implementation is called through this module, one at a time, in pluggy's order
(`implementations`), with the arguments it names (`call`). A plugin fails when it raises, answers
something that is not the hook's answer, or raises while its answer is read. Each failure goes
through `contain` (it raised) or `refuse` (its answer is garbage): logged once with the plugin's
name and the subject (a device, "host", every device at once), counted once as `plugin_error`,
and turned into `FAILED`, the answer of a plugin that failed on a subject, which the inspector
shows on each device concerned as "plugin X failed on this device; its rule was skipped".
Nothing is let through but KeyboardInterrupt, the operator's: SystemExit (a plugin's `sys.exit()`
ends nothing) and any other BaseException are contained.

`ask` is one contained, checked call (a device, the findings, the check list); `ask_all` one
per-refresh call, checked answer by answer, FAILED on every device a failure concerns. At start the
policy is the opposite (`at_start`): a plugin that fails to add its options or to configure stops
the start with a ConfigError naming it, before a device is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import pluggy

from ..model import Verdict
from ..settings import ConfigError

# The inspector's logger: plugin failures keep the logger name operators filter them by.
log = logging.getLogger("passthrough_exporter.judging.inspector")


class _Failed:
    def __repr__(self) -> str:
        return "FAILED"


FAILED: Final[Any] = _Failed()  # the answer of a plugin that failed on a subject: its rule is skipped there


@dataclass(frozen=True, slots=True)
class Impl:
    """One hook implementation: its plugin's name, the function, the arguments it takes."""

    hook: str
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    band: int  # pluggy's: 0 tryfirst, 1 plain, 2 trylast


def implementations(pm: pluggy.PluginManager, *hooks: str) -> list[Impl]:
    """The implementations of `hooks` in the order they are asked.

    For one hook, pluggy's call order (`tryfirst` first, `trylast` last, otherwise the plugin
    registered last first). For several, pluggy's bands over all of them (every `tryfirst`
    implementation, then the plain ones, then the `trylast` ones) and, within a band, hook by hook
    in the order given, each in pluggy's order.
    """
    out = []
    for hook in hooks:
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):  # pluggy calls its list backwards
            band = 0 if impl.tryfirst else 2 if impl.trylast else 1
            out.append(Impl(hook, pm.get_name(impl.plugin) or repr(impl.plugin), impl.function,
                            tuple(impl.argnames), band))
    return sorted(out, key=lambda i: i.band) if len(hooks) > 1 else out  # a stable sort keeps the rest


def call(impl: Impl, kwargs: Mapping[str, Any]) -> Any:
    """`impl` called with the arguments it names, taken from `kwargs`; not contained."""
    # Positionally, in the order pluggy read them from the signature: no dict per call.
    return impl.function(*[kwargs[a] for a in impl.argnames])


def contain(plugin: str, subject: str, errors: Counter[str], function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, plugin code run for `subject`; FAILED (logged, counted) if it raises."""
    try:
        return function(*args)
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: a plugin's sys.exit() must not end the exporter
        log.exception("plugin %s failed on %s", plugin, subject)
        errors["plugin_error"] += 1
        return FAILED


def refuse(message: str, errors: Counter[str]) -> Any:
    """An answer that is not one: `message` (which names the plugin) logged, counted; FAILED."""
    log.warning("%s", message)
    errors["plugin_error"] += 1
    return FAILED


def ask(impl: Impl, kwargs: Mapping[str, Any], subject: str, errors: Counter[str], expected: type) -> Any:
    """One implementation's answer for `subject`: None, a well-formed `expected`, or FAILED. The
    answer is checked inside the containment too: checking it can run plugin code (a subclass)."""
    return contain(impl.plugin, subject, errors, _answer, impl, kwargs, subject, errors, expected)


def _answer(impl: Impl, kwargs: Mapping[str, Any], subject: str, errors: Counter[str], expected: type) -> Any:
    answer = call(impl, kwargs)
    if answer is None or well_formed(answer, expected):
        return answer
    return refuse(f"plugin {impl.plugin} answered {short(answer)} for {subject}; ignored", errors)


def ask_all(impl: Impl, kwargs: Mapping[str, Any], devices: Mapping[str, object], errors: Counter[str],
            expected: type) -> Mapping[str, Any]:
    """A per-refresh implementation's answers, by device name: None (abstains), a well-formed
    `expected`, or FAILED for every device a failure concerns. One failure counts once.

    Raising, or answering something that is not a mapping or names a device `devices` does not
    hold, fails on every device: which ones it meant to rule on is unknown, and a deny rule must
    not leave them looking eligible. A value that is not a well-formed answer fails on its device.
    """
    subject = f"all {len(devices)} devices at once ({impl.hook})"
    answers = contain(impl.plugin, subject, errors, call, impl, kwargs)
    if answers is None:
        return _NOTHING
    if answers is not FAILED:  # reading a mapping runs plugin code too (its own items())
        answers = contain(impl.plugin, subject, errors, _checked, impl, subject, answers, devices, errors,
                          expected)
    return _EVERY_DEVICE if answers is FAILED else answers


def _checked(impl: Impl, subject: str, answers: Any, devices: Mapping[str, object], errors: Counter[str],
             expected: type) -> Mapping[str, Any]:
    """The answers as a plain dict read once (a Mapping of the plugin's own runs its code here, inside
    the containment, never later), keyed by exact `str` names of devices the host has."""
    plugin = impl.plugin
    if not isinstance(answers, Mapping):
        return refuse(f"plugin {plugin} answered {short(answers)} for {subject}, not a mapping of device names; "
                      "ignored", errors)
    out = answers if type(answers) is dict else dict(answers.items())
    names = out.keys()
    # The type first: comparing anything but a str with the host's names could run the plugin's code.
    if not all(type(n) is str for n in names) or not names <= devices.keys():
        unknown = [n for n in names if type(n) is not str or n not in devices][:5]
        return refuse(f"plugin {plugin} named device(s) this host does not have for {subject} "
                      f"({short(unknown)}); its whole answer ignored", errors)
    bad = [name for name, answer in out.items() if answer is not None and not well_formed(answer, expected)]
    if bad:
        out = dict(out)  # not the plugin's own dict: it may keep it
        refuse(f"plugin {plugin} answered {short(out[bad[0]])} for {bad[0]}" +
               (f" and garbage for {len(bad) - 1} other device(s)" if len(bad) > 1 else "") +
               f" ({impl.hook}); ignored for those devices", errors)
        out.update(dict.fromkeys(bad, FAILED))
    return out


class _EveryDevice(Mapping[str, Any]):
    """The answers of an implementation that failed as a whole: FAILED for any device."""

    def __getitem__(self, name: str) -> Any:
        return FAILED

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


_NOTHING: Mapping[str, Any] = {}
_EVERY_DEVICE: Mapping[str, Any] = _EveryDevice()


def at_start(impl: Impl, kwargs: Mapping[str, Any], doing: str) -> Any:
    """A start-up hook's answer; any failure is a ConfigError "plugin NAME failed to <doing>: ..."
    (a plugin's own ConfigError is its one line for the operator, and passes as it is)."""
    try:
        return call(impl, kwargs)
    except (ConfigError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # SystemExit too: a plugin does not end the exporter
        raise ConfigError(f"plugin {impl.plugin} failed to {doing}: {one_line(exc)}") from None


def well_formed(answer: Any, expected: type) -> bool:
    """`answer` is an `expected` that runs no plugin code when it is read later: a Verdict of exactly
    that type holding a bool or None and tuples of `str` (a subclass could compute its fields on
    every read); an iterable of names that is not a str."""
    if expected is Verdict:  # every device's verdict from every rule: kept to plain checks
        if type(answer) is not Verdict:
            return False
        eligible = answer.eligible
        return (eligible is None or eligible is True or eligible is False) and _strings(answer.reasons) \
            and _strings(answer.warnings)
    if expected is Iterable and type(answer) in _ITERABLES:
        return True
    return not isinstance(answer, (str, bytes)) and isinstance(answer, expected)


_ITERABLES = {frozenset, set, tuple, list}  # what rules answer most: no isinstance against an ABC


def _strings(value: Any) -> bool:
    if type(value) is not tuple:
        return False
    for item in value:  # a loop, not all(...): this runs for every verdict of every device
        if type(item) is not str:
            return False
    return True


def short(value: Any) -> str:
    """A plugin's answer for a log line; its own __repr__ is plugin code too."""
    try:
        text = repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException:
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

