"""tunegate: instruction tuning as an operated, auditable pipeline.

The package holds the pure logic (formats, params, validation rules, metrics,
gate decisions) plus a few small adapter modules that talk to the world
(``tracking``, ``registry``, ``dvc_adapter``, ``modeling``). Heavy libraries are
imported inside the functions that need them so that ``tunegate --help`` stays fast.
"""

__version__ = "0.1.0"
