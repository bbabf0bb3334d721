# mypy: disable-error-code="func-returns-value"
"""Assigning a ``None`` step's result: the module-level switch the README documents.

mypy reports ``x = yield from`` a ``Step[None]`` as ``func-returns-value``,
pyright does not, so no line-level ignore satisfies both; the inline mypy
configuration above does, and pyright ignores it. Checked, never run.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from hookflow_gen import Context, Flow, workflow


class Job(BaseModel):
    job_id: int


def log_it(job_id: int) -> None:
    del job_id


@workflow
def none_steps(ctx: Context, job: Job) -> Flow[int]:
    slept = yield from ctx.sleep("nap", 1)
    assert_type(slept, None)
    logged = yield from ctx.run("log", log_it, job.job_id)
    assert_type(logged, None)
    return job.job_id
