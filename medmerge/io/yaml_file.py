"""Reading a YAML file a user names (a recipe, a sweep, a run configuration): every way it can be wrong is
one line naming the file, raised as the caller's error class (exit 2), never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from medmerge.errors import MedmergeError


def read_yaml(path: str | os.PathLike, error: type[MedmergeError], what: str = "config file"):
    """The parsed document of ``path``. Missing, a directory, unreadable, not UTF-8 or not YAML: ``error``."""
    import yaml

    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise error(f"{what} {p} is not UTF-8 text (binary?); expected a YAML file") from None
    except OSError as exc:
        raise error(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {p} is not valid YAML: {exc}") from None
