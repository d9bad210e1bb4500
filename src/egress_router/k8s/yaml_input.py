"""Loading the input documents: YAML without duplicate keys, schema errors that name the field.

Shared by both inputs (our config file, the EgressRouter resource) so that a bad document
reads the same whichever form it came in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
import yaml

from egress_router.core import config

# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        documents = [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise config.ConfigError(f"{source}{where}", f"{problem}; fix the YAML") from None
    if len(documents) != 1:
        raise config.ConfigError(
            source, f"expected exactly one YAML document, found {len(documents)}"
        )
    if not isinstance(documents[0], dict):
        raise config.ConfigError(
            source, f"expected a YAML mapping, found {type_name(documents[0])}"
        )
    return documents[0]


def type_name(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "a mapping", str: "a string"}
    return names.get(type(value), type(value).__name__)



def json_path(path: Sequence[str | int]) -> str:
    """``['spec', 'addresses', 0, 'ip']`` -> ``spec.addresses[0].ip``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_error(
    schema: Mapping[str, Any], document: object, name: Callable[[str], str], hint: str
) -> config.ConfigError | None:
    """Validate ``document`` against a JSON schema: the most relevant error, naming its field."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is None:
        return None
    path = json_path(list(error.absolute_path))
    return config.ConfigError(name(path), f"{error.message}; {hint}")
