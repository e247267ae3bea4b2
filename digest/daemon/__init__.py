"""The daemon, `digest run`: one asyncio process that polls, plans at each slot and drains.

Owns: the APScheduler wiring, signals, catch-up and reload (`service.py`), the pure
pieces the jobs are built from: the slot trigger, grouping, stats (`jobs.py`), the
outbox worker that runs one drain at a time (`drainer.py`) and the failed-poll alert
state machine (`alerts.py`). Does not own any step of the pipeline
(`digest/pipeline.py` composes them) or what a slot is (`digest/schedule.py`).
"""
