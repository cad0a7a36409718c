"""The prediction log: request ids (``ids``), the SQL store (``store``), the queue + writer thread (``writer``)
and the count of rows a crash lost (``ledger``).

One database row per request (table ``prediction_batches``): the request's validated records, the
predictions as one JSON array, the model version, time and latency. The request path only appends one
``LogBatch`` to a deque (``LogWriter.submit``: no per-record work); the writer thread inserts them in
batches through ``LogStore.write``. Reads expand batches into the per-record ``LoggedPrediction`` items of
the contract, with derived ids (see ``ids``).
"""
