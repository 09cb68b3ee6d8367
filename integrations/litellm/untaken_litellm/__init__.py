"""untaken for LiteLLM: a proxy callback that mirrors each chat call to the untaken sidecar.

Load it from the proxy's config.yaml::

    litellm_settings:
      callbacks: ["untaken_litellm.handler"]

``handler`` reads its settings from ``LITELLM_UNTAKEN_*`` environment variables on
first use (see ``settings.py`` and README.md).
"""
from .callback import UntakenLogger
from .settings import Settings, SettingsError, from_env

handler = UntakenLogger()

__all__ = ["UntakenLogger", "Settings", "SettingsError", "from_env", "handler"]
