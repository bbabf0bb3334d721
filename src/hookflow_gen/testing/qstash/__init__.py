"""A QStash-compatible server in memory, for tests and offline development.

Start it in a test, point the real ``qstash`` client at it, and it delivers
signed messages to your endpoints with QStash's retries, back-off,
deduplication, callbacks and dead-letter queue, on a clock you can compress::

    from qstash import QStash
    from hookflow_gen.testing.qstash import QStashServer

    with QStashServer(time_scale=0.001) as qs:
        client = QStash(qs.token, base_url=qs.url)
        client.message.publish_json(url="http://127.0.0.1:8000/hook", body={"n": 1})
        qs.wait_idle()
        print(qs.stats.published, qs.stats.published_bytes)

Its defaults (token, signing keys, ``http://127.0.0.1:8080`` from the
``hookflow-qstash-dev`` command) are those of Upstash's own dev server, so
the two are swappable.
"""

from ._config import DEDUPLICATION_WINDOW as DEDUPLICATION_WINDOW
from ._config import DEFAULT_CURRENT_SIGNING_KEY as DEFAULT_CURRENT_SIGNING_KEY
from ._config import DEFAULT_NEXT_SIGNING_KEY as DEFAULT_NEXT_SIGNING_KEY
from ._config import DEFAULT_RETRIES as DEFAULT_RETRIES
from ._config import DEFAULT_TOKEN as DEFAULT_TOKEN
from ._config import default_backoff as default_backoff
from ._config import parse_duration as parse_duration
from ._faults import FaultPlan as FaultPlan
from ._faults import Faults as Faults
from ._records import DeliveryAttempt as DeliveryAttempt
from ._records import DlqEntry as DlqEntry
from ._records import MessageKind as MessageKind
from ._records import MessageState as MessageState
from ._records import PublishedMessage as PublishedMessage
from ._records import ScheduleRecord as ScheduleRecord
from ._records import Stats as Stats
from ._server import QStashServer as QStashServer
from ._signing import sign as sign

__all__ = [
    "DEDUPLICATION_WINDOW",
    "DEFAULT_CURRENT_SIGNING_KEY",
    "DEFAULT_NEXT_SIGNING_KEY",
    "DEFAULT_RETRIES",
    "DEFAULT_TOKEN",
    "DeliveryAttempt",
    "DlqEntry",
    "FaultPlan",
    "Faults",
    "MessageKind",
    "MessageState",
    "PublishedMessage",
    "QStashServer",
    "ScheduleRecord",
    "Stats",
    "default_backoff",
    "parse_duration",
    "sign",
]
