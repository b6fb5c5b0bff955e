"""Graph strategies: what a model family's members become when deployed (see `base.py`)."""

from compress.graphs.base import ExportOptions, Graph, Job, PtqRequest, QatExport, TorchOnlyGraph
from compress.graphs.kv_cache import KvCacheGraph
from compress.graphs.logits import LogitsGraph

__all__ = ["ExportOptions", "Graph", "Job", "KvCacheGraph", "LogitsGraph", "PtqRequest", "QatExport", "TorchOnlyGraph"]
