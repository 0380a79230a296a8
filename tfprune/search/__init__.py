"""Structure search: which width each channel group keeps under a MACs budget.

Each search returns a `SearchResult` whose `plan` picks the channels (by a criterion) at the widths it found;
`dmcp` learns the widths by gradient descent on Markov channel gates and returns a `DMCPResult`.
"""

from tfprune.search.bee_colony import abc
from tfprune.search.dmcp import dmcp
from tfprune.search.dmcp_result import DMCPResult
from tfprune.search.fitness import FineTuneFitness
from tfprune.search.random_search import random_search
from tfprune.search.result import SearchResult
from tfprune.search.width_space import WidthSpace

__all__ = ["DMCPResult", "FineTuneFitness", "SearchResult", "WidthSpace", "abc", "dmcp", "random_search"]
