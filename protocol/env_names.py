"""Environment variables that carry a settings prefix but name no setting.

pydantic-settings reads only the variables that name a field, so a misspelt one
(`MARKET_EPOCH_SECONDZ`) is silently ignored and its default used. The market and the agent
name such variables in a warning at start-up, with the closest setting's name.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping

from pydantic import BaseModel


def env_names(prefix: str, model: type[BaseModel], nested: str | None = None) -> frozenset[str]:
    """The variable of each of `model`'s settings; with `nested`, a field whose type is a
    model is a group, and each of its fields a setting (`AGENT_OFFER__REGION`)."""
    names = set()
    for field, info in model.model_fields.items():
        group = info.annotation
        if nested and isinstance(group, type) and issubclass(group, BaseModel):
            head = prefix + field.upper() + nested
            names |= {head + member.upper() for member in group.model_fields}
        else:
            names.add(prefix + field.upper())
    return frozenset(names)


def unknown_env(
    environ: Mapping[str, str],
    prefix: str,
    known: Collection[str],
    *,
    nested: str | None = None,
    also: Collection[str] = (),
    source: str = "",
) -> list[str]:
    """A sentence for each variable of `environ` that starts with `prefix` but is none of
    `known` (from `env_names`), sorted, naming the closest known one. With `nested`, a
    variable of a known group passes whatever follows the group (the group's model checks
    its members). `also`: other variables with the prefix that the project reads. `source`,
    if given, says where the variables were read (`.env`)."""
    groups = {name.split(nested, 1)[0] for name in known if nested and nested in name}
    messages = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known or name in also:
            continue
        if nested and name.split(nested, 1)[0] in groups:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        where = f" (in {source})" if source else ""
        messages.append(f"{name}{where} names no setting and is ignored{hint}")
    return messages
