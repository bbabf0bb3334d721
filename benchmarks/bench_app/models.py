"""A bare table for the INSERT+COMMIT floor."""

from django.db import models


class FloorRow(models.Model):
    run = models.CharField(max_length=64)
    position = models.IntegerField()
    result = models.TextField()
