"""Cron expressions, the crontab line and the systemd timer that run the retrain entry point (no ZenML here).

``medmerge schedule`` attaches a ZenML ``Schedule`` when the active orchestrator can schedule; otherwise
it writes what this module builds: one crontab line (never installed by medmerge) and, on request, a
systemd ``.service`` + ``.timer`` pair whose ``OnCalendar=`` is translated from the cron expression.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from medmerge.errors import MedmergeError

UNIT_NAME = "medmerge-retrain"

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, low, high, names): names map to low, low + 1, ...
_FIELDS = [
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),      # 0 and 7 are both Sunday
]
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


class CronError(MedmergeError):
    """A cron expression is malformed, or cannot be expressed where it has to go."""


class _Item:
    """One comma-separated element of a cron field: ``*``, ``N``, ``A-B``, each optionally ``/STEP``."""

    def __init__(self, start: int | None, end: int | None, step: int | None):
        self.start, self.end, self.step = start, end, step   # start None: "*"

    def values(self, low: int, high: int) -> set[int]:
        a = low if self.start is None else self.start
        b = high if self.start is None else (self.end if self.end is not None else self.start)
        return set(range(a, b + 1, self.step or 1))


def _number(tok: str, name: str, low: int, high: int, names, field: str) -> int:
    if tok.isdigit():
        v = int(tok)
    elif names and tok.lower() in names:
        v = low + names.index(tok.lower())
    else:
        hint = f" (or a name: {', '.join(names[:3])}, ...)" if names else ""
        raise CronError(f"{name} field {field!r}: {tok!r} is not a number{hint}")
    if not low <= v <= high:
        raise CronError(f"{name} field {field!r}: {v} is outside {low}-{high}")
    return v


def _parse_field(field: str, name: str, low: int, high: int, names) -> list[_Item]:
    items = []
    parts = field.split(",")
    for part in parts:
        if not part:
            raise CronError(f"{name} field {field!r}: empty list element")
        base, slash, step_s = part.partition("/")
        step = None
        if slash:
            if not step_s.isdigit() or int(step_s) < 1:
                raise CronError(f"{name} field {field!r}: step {step_s!r} must be a positive integer")
            step = int(step_s)
        if names and any(c.isalpha() for c in part) and (len(parts) > 1 or slash or "-" in base):
            # cron(5): "Ranges or lists of names are not allowed"
            raise CronError(f"{name} field {field!r}: names are allowed only alone; use numbers in ranges, "
                            f"lists and steps")
        if base == "*":
            items.append(_Item(None, None, step))
            continue
        lo, dash, hi = base.partition("-")
        start = _number(lo, name, low, high, names, field)
        if dash:
            end = _number(hi, name, low, high, names, field)
            if end < start:
                raise CronError(f"{name} field {field!r}: range {start}-{end} runs backwards")
            items.append(_Item(start, end, step))
        else:
            if step is not None:
                raise CronError(f"{name} field {field!r}: a step needs '*' or a range before it ('*/{step}', "
                                f"'{start}-{high}/{step}')")
            items.append(_Item(start, None, None))
    return items


def parse_cron(expr: str) -> list[list[_Item]]:
    """The five fields of a standard cron expression, validated; :class:`CronError` names the problem."""
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"cron expression {expr!r}: expected 5 fields (minute hour day-of-month month "
                        f"day-of-week), got {len(fields)}")
    try:
        return [_parse_field(f, *spec) for f, spec in zip(fields, _FIELDS)]
    except CronError as exc:
        raise CronError(f"cron expression {expr!r}: {exc}") from None


def validate_cron(expr: str) -> str:
    """``expr`` with its fields separated by single spaces, after checking every field."""
    parse_cron(expr)
    return " ".join(expr.split())


# --- systemd ------------------------------------------------------------------------------------

def _systemd_field(items: list[_Item], width: int, low: int) -> str:
    out = []
    for it in items:
        if it.start is None:
            s = "*" if it.step is None else f"{low:0{width}d}/{it.step}"
        elif it.end is None:
            s = f"{it.start:0{width}d}"
        else:
            s = f"{it.start:0{width}d}..{it.end:0{width}d}" + (f"/{it.step}" if it.step else "")
        out.append(s)
    return "*" if "*" in out else ",".join(out)


def systemd_on_calendar(expr: str) -> str:
    """The ``OnCalendar=`` value that fires when the cron expression does (``0 3 * * 1`` -> ``Mon *-*-* 03:00:00``).

    Refused: a day-of-month *and* a day-of-week restriction together (cron fires when either matches,
    systemd only when both do)."""
    minute, hour, dom, month, dow = parse_cron(expr)
    days = {d % 7 for i in dow for d in i.values(0, 7)}
    dow_any = len(days) == 7
    _, _, dom_text, _, dow_text = expr.split()
    # cron (vixie/cronie): a day-of-month or day-of-week field that starts with '*' makes the two ANDed
    # (as in systemd); when neither does, a day matches either field
    if not dom_text.startswith("*") and not dow_text.startswith("*"):
        raise CronError(f"cron expression {expr!r}: both day-of-month and day-of-week are restricted; cron runs "
                        f"when either matches, systemd's OnCalendar only when both do. Use the crontab line, or "
                        f"restrict only one of them")
    weekday = "" if dow_any else ",".join(_SYSTEMD_DAYS[d] for d in [1, 2, 3, 4, 5, 6, 0] if d in days) + " "
    return (f"{weekday}*-{_systemd_field(month, 2, 1)}-{_systemd_field(dom, 2, 1)} "
            f"{_systemd_field(hour, 2, 0)}:{_systemd_field(minute, 2, 0)}:00")


# --- what runs ------------------------------------------------------------------------------------

def retrain_argv(python: str | Path, search_config: str | Path, finetune_config: str | Path,
                 promote_knee: bool = False) -> list[str]:
    argv = [str(python), "-m", "pipelines.retrain", "--search-config", str(search_config),
            "--finetune-config", str(finetune_config)]
    return argv + (["--promote-knee"] if promote_knee else [])


def scheduled_env(environ=None) -> dict[str, str]:
    """The environment a cron/systemd run needs from this shell: where ZenML keeps its store and, unless it
    carries credentials, the MLflow tracking URI (cron starts with an almost empty environment)."""
    environ = os.environ if environ is None else environ
    out = {}
    if environ.get("ZENML_CONFIG_PATH"):
        out["ZENML_CONFIG_PATH"] = str(Path(environ["ZENML_CONFIG_PATH"]).resolve())
    from medmerge.tracking.names import tracking_env

    out.update(tracking_env(environ))
    return out


def crontab_line(cron: str, repo: Path, argv: list[str], log: Path, env: dict[str, str]) -> str:
    """``<cron> cd <repo> && [env K=V ...] <python> -m pipelines.retrain ... >> <log> 2>&1`` ('%' escaped:
    cron turns a bare one into a newline)."""
    q = shlex.quote
    cmd = f"cd {q(str(repo))} && "
    if env:
        cmd += "env " + " ".join(f"{k}={q(v)}" for k, v in env.items()) + " "
    cmd += " ".join(q(a) for a in argv) + f" >> {q(str(log))} 2>&1"
    return f"{validate_cron(cron)} {cmd.replace('%', chr(92) + '%')}"


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-+=:,@" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_units(cron: str, repo: Path, argv: list[str], log: Path, env: dict[str, str]) -> dict[str, str]:
    """``{file name: text}`` of a oneshot service running ``argv`` in ``repo`` and the timer that starts it."""
    on_calendar = systemd_on_calendar(cron)
    env_lines = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in env.items())
    service = (f"[Unit]\nDescription=medmerge scheduled retraining (python -m pipelines.retrain)\n\n"
               f"[Service]\nType=oneshot\nWorkingDirectory={_systemd_quote(str(repo))}\n{env_lines}"
               f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}\n"
               f"StandardOutput=append:{log}\nStandardError=append:{log}\n").replace("%", "%%")  # no specifiers
    timer = (f"[Unit]\nDescription=medmerge scheduled retraining, cron '{validate_cron(cron)}'\n\n"
             f"[Timer]\nOnCalendar={on_calendar}\nUnit={UNIT_NAME}.service\n\n"
             f"[Install]\nWantedBy=timers.target\n")
    return {f"{UNIT_NAME}.service": service, f"{UNIT_NAME}.timer": timer}


