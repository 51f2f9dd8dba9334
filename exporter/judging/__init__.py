"""Judging: which devices can be passed through, what goes with each, what is free, what is wrong.

- `hookspecs`: the contract with the rule plugins (the built-ins in `passthrough_exporter.plugins`
  and third-party ones); `inspector`: loads them and asks them; `calls`: how each implementation is
  called and its failures contained; `options`: their command-line options;
- `facts`: what is derived from an inventory once per refresh, for every rule;
- `live`: the availability rule ("in use", "available", what blocks a device);
- `snapshot`: the judged result; `query`: its index, for the `devices` filters and the API.

May import: the package's root modules and `reading`. The rule plugins sit on this layer too.
Knows nothing of the metrics, the server or the commands.
"""
