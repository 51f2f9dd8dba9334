"""Rendering: a judged snapshot as what people and programs read.

- `exposition`: the Prometheus text format; `metrics`: every host metric family, declared once;
  `status`: the families of the refreshes themselves (`passthrough_source_up`, ...);
- `jsonout`: JSON; `objects`: a device as JSON, for the CLI and the API; `bodies`: the API's bodies;
- `hostpage`: the host page; `check`: the `check` report;
- `rendered`: every body of one refresh in one record, as the refresh worker hands it to the server.

May import: the package's root modules, `reading` and `judging`. Knows nothing of the server or the
commands: a renderer is a function of a snapshot.
"""
