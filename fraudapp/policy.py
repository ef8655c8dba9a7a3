"""Policy: from risk scores to approve / review / decline, block and allow lists first.

The lists live in PostgreSQL (`list_entry`) and in memory here, so the scorer checks them with a
dict lookup per transaction and a change through the API applies to the very next batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
DECISIONS: tuple[str, ...] = (APPROVE, REVIEW, DECLINE)
BLOCK_RULE, ALLOW_RULE = "block_list", "allow_list"


@dataclass(frozen=True, slots=True)
class ListEntry:
    entry_id: int
    list: str  # "block" | "allow"
    entity_type: str  # "customer" | "terminal"
    entity_id: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class PolicyDecisions:
    decision: np.ndarray  # object: "approve" | "review" | "decline"
    rule: np.ndarray  # object: None | "block_list" | "allow_list"


class Policy:
    """Thresholds on the 0–99 score, overridden by the block and allow lists."""

    def __init__(self, *, review_score: int, decline_score: int) -> None:
        self.review_score = review_score
        self.decline_score = decline_score
        self._customers: dict[str, ListEntry] = {}
        self._terminals: dict[str, ListEntry] = {}

    def load(self, entries: Iterable[ListEntry]) -> None:
        self._customers.clear()
        self._terminals.clear()
        for entry in entries:
            self.put(entry)

    def put(self, entry: ListEntry) -> None:
        self._index(entry.entity_type)[entry.entity_id] = entry

    def remove(self, entity_type: str, entity_id: str) -> None:
        self._index(entity_type).pop(entity_id, None)

    def entry(self, entity_type: str, entity_id: str) -> ListEntry | None:
        found = self._index(entity_type).get(entity_id)
        if found is not None and not found.active(datetime.now(UTC)):
            return None
        return found

    def _index(self, entity_type: str) -> dict[str, ListEntry]:
        return self._customers if entity_type == "customer" else self._terminals

    def decide(
        self, scores: np.ndarray, customer_ids: np.ndarray, terminal_ids: np.ndarray
    ) -> PolicyDecisions:
        decision = np.full(len(scores), APPROVE, dtype=object)
        decision[scores >= self.review_score] = REVIEW
        decision[scores >= self.decline_score] = DECLINE
        rule = np.full(len(scores), None, dtype=object)
        if self._customers or self._terminals:
            now = datetime.now(UTC)
            listed = [
                i
                for i, (customer, terminal) in enumerate(
                    zip(customer_ids, terminal_ids, strict=True)
                )
                if customer in self._customers or terminal in self._terminals
            ]
            for i in listed:
                entries = [
                    e
                    for e in (
                        self._customers.get(customer_ids[i]),
                        self._terminals.get(terminal_ids[i]),
                    )
                    if e is not None and e.active(now)
                ]
                if any(e.list == "block" for e in entries):
                    decision[i], rule[i] = DECLINE, BLOCK_RULE
                elif entries:
                    decision[i], rule[i] = APPROVE, ALLOW_RULE
        return PolicyDecisions(decision=decision, rule=rule)
