"""The robustness benchmark: a versioned evaluation protocol, model zoos, and the leaderboard.

- :data:`PROTOCOL_V1` / :class:`Protocol` / :func:`evaluate_protocol` -> :class:`BenchResult`;
- :func:`load_zoo` / :func:`parse_zoo` -> :class:`ZooSpec` (methods at a few settings, seeds, user models);
- :func:`run_bench` -> :class:`Leaderboard` (CSV, markdown, trade-off plot, HTML report).
"""

from .loader import ModelSpecError, build_model, resolve_spec
from .protocol import PROTOCOL_V1, PROTOCOLS, BenchResult, Protocol, TestSubset, evaluate_protocol, get_protocol
from .run import Leaderboard, aggregate, markdown_table, run_bench
from .zoo import METHODS, ZooError, ZooSpec, load_zoo, parse_zoo

__all__ = [
    "PROTOCOL_V1", "PROTOCOLS", "Protocol", "TestSubset", "BenchResult", "evaluate_protocol", "get_protocol",
    "load_zoo", "parse_zoo", "ZooSpec", "ZooError", "METHODS", "run_bench", "Leaderboard", "aggregate",
    "markdown_table", "ModelSpecError", "build_model", "resolve_spec",
]
