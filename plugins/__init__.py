"""Built-in rule plugins, registered through the `passthrough_exporter.plugins` entry points."""
