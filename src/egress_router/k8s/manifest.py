"""Read what ``egress-router render`` renders from: our config file or an OpenShift EgressRouter.

Both inputs end up as one `RouterSpec`, judged once, before anything is rendered. The
destinations go through the router's own parser (`config.parse_destinations` and friends), so
an error reads as the container would report it, but names the field of the input file
(``destinations[3]``, ``spec.redirect.redirectRules[1]``) instead of an environment variable.
The last step loads the environment the containers will get through `config.load_config`:
what renders is what the init container accepts. Pure: it parses text it is given.

The modules, by noun: `spec` (RouterSpec), `yaml_input` (the loader, schema errors), `fields`
(field checks), `config_file` and `egressrouter` (the two input parsers),
`egressrouter_schema` (the EgressRouter schema). This module names them all in one place.
"""

from __future__ import annotations

from egress_router.k8s.config_file import (
    CONFIG_FIELDS,
    load_config_text,
)
from egress_router.k8s.egressrouter import (
    CR_ANNOTATION_PREFIX,
    CR_HA_ANNOTATION,
    load_egressrouter_text,
)
from egress_router.k8s.egressrouter_schema import (
    EGRESSROUTER_API_VERSION,
    EGRESSROUTER_KIND,
    EGRESSROUTER_SCHEMA,
)
from egress_router.k8s.spec import (
    CNI_BIN_DIR,
    CNI_EXECUTABLE,
    CNI_TYPE,
    DEFAULT_CNI_INTERFACE,
    DEFAULT_IMAGE,
    DEFAULT_MACVLAN_MODE,
    DESTINATIONS_DIR,
    DESTINATIONS_KEY,
    DESTINATIONS_PATH,
    PULL_POLICIES,
    Attachment,
    ExtraPort,
    Overrides,
    RouterSpec,
    Rule,
    has_fallback,
    port_rules,
)
from egress_router.k8s.yaml_input import (
    json_path,
    schema_error,
)

__all__ = [
    "CNI_BIN_DIR",
    "CNI_EXECUTABLE",
    "CNI_TYPE",
    "CONFIG_FIELDS",
    "CR_ANNOTATION_PREFIX",
    "CR_HA_ANNOTATION",
    "DEFAULT_CNI_INTERFACE",
    "DEFAULT_IMAGE",
    "DEFAULT_MACVLAN_MODE",
    "DESTINATIONS_DIR",
    "DESTINATIONS_KEY",
    "DESTINATIONS_PATH",
    "EGRESSROUTER_API_VERSION",
    "EGRESSROUTER_KIND",
    "EGRESSROUTER_SCHEMA",
    "PULL_POLICIES",
    "Attachment",
    "ExtraPort",
    "Overrides",
    "RouterSpec",
    "Rule",
    "has_fallback",
    "json_path",
    "load_config_text",
    "load_egressrouter_text",
    "port_rules",
    "schema_error",
]
