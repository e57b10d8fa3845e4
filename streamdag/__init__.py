"""streamdag: streaming DAGs of numba operators on Ray actors, fed from Kafka.

Importing this package starts nothing: no Ray, no network.
"""

# First: numba caches kernels in one known directory (before any kernel is decorated).
import streamdag.kernel_cache  # noqa: F401
from streamdag.batch import Batch
from streamdag.combine import combine
from streamdag.endpoints import source
from streamdag.errors import StreamdagError
from streamdag.graph import Column, Graph, Node, make_node
from streamdag.schema import Schema
from streamdag.tag_query import tag_query
from streamdag.udf import UserFunction, udf

__all__ = [
    "Batch",
    "Column",
    "Graph",
    "Node",
    "Schema",
    "StreamdagError",
    "UserFunction",
    "combine",
    "make_node",
    "source",
    "tag_query",
    "udf",
]

__version__ = "0.1.0"
