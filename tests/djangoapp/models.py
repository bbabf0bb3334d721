"""Tables the test workflows' steps write to."""

from __future__ import annotations

from django.db import models


class Execution(models.Model):
    """One execution of a step function (to count how often each step ran)."""

    run_id: models.CharField[str, str] = models.CharField(max_length=255, db_index=True)
    position: models.IntegerField[int, int] = models.IntegerField()
    name: models.CharField[str, str] = models.CharField(max_length=100)
    attempt: models.IntegerField[int, int] = models.IntegerField(default=1)
    started: models.FloatField[float, float] = models.FloatField(default=0.0)
    finished: models.FloatField[float, float] = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"{self.run_id} #{self.position} {self.name}"


class Entry(models.Model):
    """A row an atomic step writes."""

    label: models.CharField[str, str] = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.label
