"""Structure search: which width each channel group keeps under a MACs budget.

Each search returns a `SearchResult` whose `plan` picks the channels (by a criterion) at the widths it found.
"""

from tfprune.search.bee_colony import abc
from tfprune.search.fitness import FineTuneFitness
from tfprune.search.random_search import random_search
from tfprune.search.result import SearchResult
from tfprune.search.width_space import WidthSpace

__all__ = ["FineTuneFitness", "SearchResult", "WidthSpace", "abc", "random_search"]
