"""What every settings group shares: the ``SFUMATO_`` prefix and how a group documents itself.

``core.config.Settings`` inherits from one group per concern. Each group is a
:class:`SettingsGroup` so it parses the same environment the same way on its own (its tests and
the reference page use that); the composed class is the only one the code reads.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic_settings import BaseSettings, SettingsConfigDict

#: Every setting is the environment variable ``SFUMATO_<FIELD NAME>`` (case-insensitive).
ENV_PREFIX = "SFUMATO_"

#: Key in a field's ``json_schema_extra`` holding the default as the reference page shows it,
#: for defaults that are computed (from another setting, the host, the registry) rather than
#: a constant.
SHOWN_DEFAULT = "shown_default"


def shown_default(text: str) -> dict[str, Any]:
    """``json_schema_extra`` for a field whose default is computed: ``text`` says how, in words
    (markdown), on the configuration reference page."""
    return {SHOWN_DEFAULT: text}


class SettingsGroup(BaseSettings):
    """The settings of one concern. A subclass's docstring says what it configures and which
    processes read it; :attr:`section` is its heading on the configuration reference page."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    #: Heading of this group on docs/reference/configuration.md.
    section: ClassVar[str] = ""
