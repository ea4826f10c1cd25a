"""Which replica serves a request.

cache_aware (after SGLang's router): match the request's key in the prefix tree of recently
routed prompts. If the best replica matched at least `cache_threshold` of the key, it gets the
request, unless it is overloaded: more than `balance_abs_threshold` requests in flight beyond
the least loaded replica and more than `balance_rel_threshold` times as many. Otherwise (a new
conversation, a short match, an overloaded match) the least loaded replica gets it, ties going
to the one remembering the fewest prompt characters (the most room in its cache). Either way
the key is recorded under the chosen replica, so the next turn of a conversation follows it.

round_robin: the healthy replicas in turn (the baseline the benchmark compares with).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from radixrt.router.config import RouterConfig
from radixrt.router.health import Replica
from radixrt.router.tree import PrefixTree


@dataclass(frozen=True)
class Decision:
    replica: Replica
    reason: str  # prefix_match | load_balance | short_match | no_key | round_robin
    matched: int = 0  # characters of the key the chosen replica had seen


class Policy(Protocol):
    def choose(self, key: str, candidates: Sequence[Replica]) -> Decision:
        """Pick one of `candidates` (non-empty, healthy) for a request with this key."""
        ...

    def forget(self, replica: Replica) -> None:
        """The replica's cache is gone (it died, or restarted)."""
        ...

    def reset(self) -> None:
        """Every replica's cache was flushed."""
        ...

    def tree_chars(self, replica: Replica) -> int: ...


class RoundRobinPolicy:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, key: str, candidates: Sequence[Replica]) -> Decision:
        return Decision(candidates[next(self._turn) % len(candidates)], "round_robin")

    def forget(self, replica: Replica) -> None:
        pass

    def reset(self) -> None:
        pass

    def tree_chars(self, replica: Replica) -> int:
        return 0


class CacheAwarePolicy:
    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: int = 8,
                 balance_rel_threshold: float = 1.5, max_tree_chars: int = 4_000_000) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs_threshold
        self.balance_rel = balance_rel_threshold
        self.tree = PrefixTree(max_tree_chars)

    def least_loaded(self, candidates: Sequence[Replica]) -> Replica:
        return min(candidates, key=lambda r: (r.in_flight, self.tree.size(r.name), r.index))

    def overloaded(self, r: Replica, least: Replica) -> bool:
        return (r.in_flight - least.in_flight > self.balance_abs
                and r.in_flight > self.balance_rel * least.in_flight)

    def choose(self, key: str, candidates: Sequence[Replica]) -> Decision:
        least = self.least_loaded(candidates)
        if not key:
            return Decision(least, "no_key")
        matched = self.tree.match(key)
        # The longest match; equal matches go to the less loaded replica.
        best = max(candidates, key=lambda r: (matched.get(r.name, 0), -r.in_flight, -r.index))
        n = matched.get(best.name, 0)
        if n == 0 or n < self.cache_threshold * len(key):
            decision = Decision(least, "short_match", matched.get(least.name, 0))
        elif self.overloaded(best, least):
            decision = Decision(least, "load_balance", matched.get(least.name, 0))
        else:
            decision = Decision(best, "prefix_match", n)
        self.tree.insert(key, decision.replica.name)
        return decision

    def forget(self, replica: Replica) -> None:
        self.tree.remove_tenant(replica.name)

    def reset(self) -> None:
        self.tree.clear()

    def tree_chars(self, replica: Replica) -> int:
        return self.tree.size(replica.name)


def make_policy(config: RouterConfig) -> Policy:
    if config.policy == "round_robin":
        return RoundRobinPolicy()
    return CacheAwarePolicy(config.cache_threshold, config.balance_abs_threshold,
                            config.balance_rel_threshold, config.max_tree_chars)
