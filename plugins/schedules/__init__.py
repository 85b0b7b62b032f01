"""Built-in schedules: when, where and how strongly an intervention applies during generation."""

from polysteer.hookspecs import hookimpl
from polysteer.plugins.schedules.builtin import BUILTIN_SCHEDULES

__all__ = ["BUILTIN_SCHEDULES"]


@hookimpl
def register_schedules(register):
    for schedule in BUILTIN_SCHEDULES:
        register(schedule)
