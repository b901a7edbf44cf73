"""Feast definitions for `feast apply` run by hand in this folder: all derived from the pipeline spec.

driftloop applies the same objects itself on `driftloop up`; this file lets the Feast CLI and UI see them.
DRIFTLOOP_* settings (spec, data dir, online store) are read from the environment as driftloop reads them.
"""

from driftloop import settings as _settings
from driftloop.features.feast.repo import feast_objects
from driftloop.spec import load_spec

_config = _settings.load()
entity, push_source, feature_view = feast_objects(load_spec(_config.spec), _config)
