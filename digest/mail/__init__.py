"""Mail: delivering what the outbox holds, through Maildir or SMTP.

Owns: the drain worker, its batched claims and group commits, and the retry ladder
across runs (`drain.py`), the Transport contract and the Maildir transport
(`delivery.py`), the SMTP transport: a pool of aiosmtplib connections with TLS or
STARTTLS, AUTH and a rate cap (`smtp.py`), MAIL/RCPT/DATA pipelined on the wire
(`wire.py`), and DKIM signatures with dkimpy (`dkim.py`). Does not own the outbox table
and its transactions (`digest/store/outbox.py`, `claims.py`, `leases.py`: all SQL lives
in `digest/store/`) or rendering (`digest/render/`).
"""
