"""One frozen settings object, resolved once: flags > environment > TOML file > defaults.

Every setting is declared once, on its :class:`Settings` field (:mod:`.catalogue`, with
:func:`~.declare.setting`): its parser with its bounds, its help, its flag and the
subcommands that offer it, its environment variable, and whether it is a config-file key.
The CLI's flags, the config file's validation (:mod:`.resolve`) and the README's option
tables all follow from :data:`DECLARATIONS`. An unknown key, a wrong type or an
out-of-range value raises :class:`~worker.errors.ConfigError` naming the key.
"""

from worker.settings.catalogue import (
    CONSUME,
    DECLARATIONS,
    DEFAULT_BASE_URL,
    DEFAULT_RATE,
    DELETE_ALL,
    ENQUEUE,
    RUN,
    SETTING_COMMANDS,
    Settings,
)
from worker.settings.declare import Declaration
from worker.settings.resolve import check_base_url, is_loopback, load_settings, read_config_file

__all__ = [
    "CONSUME",
    "DECLARATIONS",
    "DEFAULT_BASE_URL",
    "DEFAULT_RATE",
    "DELETE_ALL",
    "ENQUEUE",
    "RUN",
    "SETTING_COMMANDS",
    "Declaration",
    "Settings",
    "check_base_url",
    "is_loopback",
    "load_settings",
    "read_config_file",
]
