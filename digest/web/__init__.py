"""The web endpoint: one-click unsubscribe (RFC 8058), preferences, web copies, Atom feeds.

Owns: the signed, opaque tokens and the public URLs built from them (`tokens.py`, no
aiohttp: planning imports it), the aiohttp application and its route modules (`app.py`
wires them: `unsubscribe.py` for /u/TOKEN, `preferences.py` for /p/TOKEN, `copies.py`
for a digest's web copy at /d/TOKEN, `feeds.py` for the Atom feed at /f/TOKEN.atom, with
`explain.py` matching stored papers again for their topics), the HTML pages
(`pages.py`, templates in the repository's `templates/pages/`), and serving it
inside the daemon's event loop or alone as `digest serve` (`server.py`: AppRunner +
TCPSite, no signal handlers of aiohttp's own).

Does not own: what a suppression, a pause or a muted topic does to planning
(`digest/pipeline.py`), their SQL (`digest/store/recipients.py`, `copies.py`, `feeds.py`),
or the emails' links and headers (`digest/render/`, given the links this package makes).

Adding a route: write a module with `add_routes(app: web.Application) -> None` that
reads `app[CONTEXT]` (a `WebContext`) in its handlers, and list it in `app.ROUTES`.
"""
