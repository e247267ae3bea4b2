"""Mail: delivering what the outbox holds, through Maildir or SMTP.

Owns: the drain worker and the Transport contract, the retry ladder across runs and
the Maildir transport (`delivery.py`), the SMTP transport: a pool of aiosmtplib
connections with TLS or STARTTLS, AUTH and a rate cap (`smtp.py`), and MAIL/RCPT/DATA
pipelined on the wire (`wire.py`), and DKIM signatures with dkimpy (`dkim.py`). Does
not own the outbox table and its transactions
(`digest/store/outbox.py`, `digest/store/claims.py`: all SQL lives in `digest/store/`) or rendering
(`digest/render/`).
"""
