"""Where a model comes from: local folder, shipped configs, or the Hub (being consolidated from sources/network)."""

from .loading import pipeline_file_patterns, snapshot_patterns  # noqa: F401  (moves here in the restructuring)
from .sources import hub_offline, hub_reachable, read_model_index, resolve_model_source  # noqa: F401
