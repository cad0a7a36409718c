"""Request ids and record ids of the prediction log, derived from one batch key per request.

* record id = batch id * ``ID_STRIDE`` + position in the batch (ascending in log order);
* request id = the batch key (28 hex: 48-bit ms clock + 64 random bits) + the index as 4 hex digits,
  so it is 32 hex and feedback finds its batch without a per-record index.
"""

from __future__ import annotations

import os
import re
import time

from gradeflow_shared.contracts import RECORD_ID_STRIDE

ID_STRIDE = RECORD_ID_STRIDE  # record id = batch id * ID_STRIDE + position (batches hold <= ID_STRIDE)
_HEX32 = re.compile(r"[0-9a-f]{32}")


def new_batch_key() -> str:
    """28 hex digits, time-ordered (48-bit ms clock + 64 random bits): cheap appends to the unique index."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


def request_ids(batch_key: str, n: int) -> list[str]:
    """The request ids of the n records of one batch: batch key + index as 4 hex digits."""
    return [f"{batch_key}{i:04x}" for i in range(n)]


def split_request_id(request_id: str) -> tuple[str, int]:
    """(batch key, index) of a request id; ids not made by request_ids() map to (the id, -1)."""
    if len(request_id) == 32 and _HEX32.fullmatch(request_id):
        return request_id[:28], int(request_id[28:], 16)
    return request_id, -1


def record_request_id(batch_key: str, first_index: int, pos: int) -> str:
    """The request id of the record at ``pos`` of a stored batch (migrated rows: the key itself)."""
    return batch_key if first_index < 0 else f"{batch_key}{first_index + pos:04x}"
