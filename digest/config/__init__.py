"""The subscription file (TOML) and the environment, turned into a validated, frozen `Config`.

Owns: the types every other stage codes against (`schema.py`), reading the file and
TOML syntax errors (`load.py`; a big file in pieces: `chunks.py`, on two cores:
`halves.py`, its checked subscribers kept until it changes: `remembered.py`), the rules of every
key (`build.py`; [defaults] and [[subscribers]]: `subscribers.py`) with errors that
name the file, line, subscriber and field (`reader.py`), the key -> line scanner
(`lines.py`), the value parsers (`values.py`) and the example file `digest init`
writes (`example.toml`). Does not own what a schedule means (`digest/schedule.py`)
or what a query means (`digest/topics/query.py`): their parsers are called only to
validate.

    config = load_config(Path("digest.toml"), os.environ)   # ConfigError lists every problem
"""

from digest.config.load import example_config, load_config, summarize_config
from digest.config.schema import (
    DEFAULT_BASE_URL,
    AlertsConfig,
    Config,
    DaemonConfig,
    DkimConfig,
    MailConfig,
    SmtpConfig,
    SourceConfig,
    StorageConfig,
    Subscriber,
    Topic,
    Topics,
    WebConfig,
)
from digest.config.values import ascii_address

__all__ = [
    "DEFAULT_BASE_URL",
    "AlertsConfig",
    "Config",
    "DaemonConfig",
    "DkimConfig",
    "MailConfig",
    "SmtpConfig",
    "SourceConfig",
    "StorageConfig",
    "Subscriber",
    "Topic",
    "Topics",
    "WebConfig",
    "ascii_address",
    "example_config",
    "load_config",
    "summarize_config",
]
