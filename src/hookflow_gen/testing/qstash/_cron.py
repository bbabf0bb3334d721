"""Cron expressions as QStash schedules take them: five fields, optional ``CRON_TZ=``."""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo

__all__ = ["Cron", "CronError"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        start=1,
    )
}
_DAYS = {
    name: number for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])
}


class CronError(ValueError):
    """A cron expression QStash would refuse."""


def _field(text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"invalid step in {part!r}")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        else:
            first, dash, last = body.partition("-")
            start = _value(first, low, high, names)
            end = _value(last, low, high, names) if dash else (high if step_text else start)
            if end < start:
                raise CronError(f"invalid range {body!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, low: int, high: int, names: dict[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronError(f"invalid value {text!r}")
    number = int(text)
    if not low <= number <= high:
        raise CronError(f"{number} is out of range {low}-{high}")
    return number


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression (minute, hour, day of month, month, day of week).

    ``*``, lists, ranges, steps and month or day names are accepted; day of
    week 7 is Sunday, as 0 is. When both day fields are restricted, a day
    matching either fires (the classic cron rule). A ``CRON_TZ=Area/City``
    prefix evaluates the fields in that zone; UTC otherwise, as QStash does.
    """

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool
    zone: datetime.tzinfo

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse an ``Upstash-Cron`` header value.

        Raises:
            CronError: If the expression is not a valid five-field cron.
        """
        fields = text.split()
        zone: datetime.tzinfo = datetime.UTC
        if fields and fields[0].upper().startswith("CRON_TZ="):
            name = fields.pop(0).split("=", 1)[1]
            try:
                zone = zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
                raise CronError(f"unknown time zone {name!r}") from error
        if len(fields) != 5:
            raise CronError(f"a cron expression has 5 fields, got {len(fields)}: {text!r}")
        minute, hour, day, month, weekday = fields
        weekdays = _field(weekday, 0, 7, _DAYS)
        return cls(
            text=text,
            minutes=_field(minute, 0, 59, {}),
            hours=_field(hour, 0, 23, {}),
            days=_field(day, 1, 31, {}),
            months=_field(month, 1, 12, _MONTHS),
            weekdays=frozenset(7 if d == 0 else d for d in weekdays),
            any_day=day == "*",
            any_weekday=weekday == "*",
            zone=zone,
        )

    def _day_matches(self, moment: datetime.datetime) -> bool:
        in_month = moment.day in self.days
        in_week = moment.isoweekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, timestamp: float) -> float:
        """Return the first firing time strictly after ``timestamp`` (unix seconds).

        Raises:
            CronError: If the expression can never fire (e.g. February 30).
        """
        moment = datetime.datetime.fromtimestamp(timestamp, self.zone).replace(
            second=0, microsecond=0
        ) + datetime.timedelta(minutes=1)
        # Skipping whole months, days and hours keeps this to a few hundred steps.
        limit = moment + datetime.timedelta(days=366 * 5)
        while moment < limit:
            if moment.month not in self.months:
                year = moment.year + (moment.month == 12)
                month = moment.month % 12 + 1
                moment = moment.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(moment):
                moment = (moment + datetime.timedelta(days=1)).replace(hour=0, minute=0)
            elif moment.hour not in self.hours:
                moment = (moment + datetime.timedelta(hours=1)).replace(minute=0)
            elif moment.minute not in self.minutes:
                moment += datetime.timedelta(minutes=1)
            else:
                return moment.timestamp()
        raise CronError(f"{self.text!r} never fires")
