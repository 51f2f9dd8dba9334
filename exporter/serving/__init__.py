"""Serving: the HTTP side of `serve`, in a process that does nothing else.

- `server`: HTTP/1.1 on h11 and asyncio, the routes (`/metrics`, `/api/...`, the host page);
- `connections`: how many connections, for how long; `webconfig`: TLS and basic auth;
- `refresher`: the refresh schedule, the failure rule, the refresh worker process and what is published.

May import: the package's root modules, `judging.query` and `rendering` (the record a refresh hands
over and its bodies). It imports no plugin, source or pluggy (a test holds it to that): the reading
and judging run in the refresh worker (`commands.refresh_worker`), a process of its own.
"""
