"""Plan: for each pruned channel group, the channel indices it keeps. A small value that saves as JSON."""

import dataclasses
import json
import os

import numpy as np

from tfprune.errors import PlanError

FORMAT = "tfprune.plan/1"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which channels each pruned group keeps.

    Args:
        keep: `{group name: sorted kept channel indices}`; groups not named keep all their channels.
        widths: `{group name: channel count before pruning}`, to catch a plan applied to another model.
        prune_outputs: whether groups reaching model outputs could be pruned when the plan was made.

    Example:

    >>> plan = Plan(keep={"conv2d": (0, 2, 3)}, widths={"conv2d": 8})
    >>> Plan.from_json(plan.to_json()) == plan
    True
    """

    keep: dict
    widths: dict
    prune_outputs: bool = False

    def __post_init__(self):
        keep = {str(k): tuple(np.sort(np.asarray(v, dtype=np.int64)).tolist()) for k, v in self.keep.items()}
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "widths", {str(k): int(v) for k, v in self.widths.items()})
        missing = sorted(set(keep) - set(self.widths))
        if missing:
            raise PlanError(f"Plan gives no width for groups {missing}; every kept list needs its group's width.")

    def removed(self, name) -> int:
        """How many channels group `name` loses (0 for groups not in the plan)."""
        return self.widths[name] - len(self.keep[name]) if name in self.keep else 0

    def validate(self, graph):
        """Check the plan against a `ChannelGraph`; raise `PlanError` saying what does not fit."""
        missing = [name for name in self.keep if name not in graph]
        if missing:
            names = ", ".join(f"'{m}'" for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                 else "")
            groups = [g.name for g in graph.groups if g.prunable]
            what = ("The plan was made for another model" if len(missing) == len(self.keep) else
                    f"{len(missing)} of the plan's {len(self.keep)} groups are not in this model")
            raise PlanError(
                f"{what}: model '{graph.model.name}' has no channel group named {names}. A plan fits the model it "
                "was made from (the same layers, the same names): make one for this model with tfprune.plan(model, "
                f"...). Its prunable groups: {', '.join(groups[:8]) or 'none'}{', ...' if len(groups) > 8 else ''}.")
        for name, kept in self.keep.items():
            group = graph[name]
            if group.width != self.widths[name]:
                raise PlanError(f"Group '{name}' has {group.width} channels in this model, but the plan was made for "
                                f"{self.widths[name]}: the plan belongs to another model.")
            if not kept:
                raise PlanError(f"Plan keeps no channel of group '{name}': a group must keep at least one.")
            if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= group.width:
                raise PlanError(f"Plan for group '{name}' must list distinct indices in [0, {group.width}); "
                                f"got {list(kept)[:10]}{'...' if len(kept) > 10 else ''}.")
            if len(kept) < group.width and not group.prunable:
                raise PlanError(f"Group '{name}' cannot be pruned: {'; '.join(group.reasons)}.")
            for path, channels in group.parts:
                if not np.isin(channels, kept).any():
                    raise PlanError(f"Plan for group '{name}' removes all the channels of layer '{path}' "
                                    f"(channels {channels.tolist()} of the group); keep at least one of them.")
            if group.blocks is not None and len(kept) < group.width:
                counts = np.bincount(group.blocks[list(kept)], minlength=group.n_blocks)
                if len(set(counts.tolist())) != 1:
                    raise PlanError(f"Group '{name}' feeds grouped layers and must keep the same number of channels "
                                    f"in each of its {group.n_blocks} blocks; the plan keeps {counts.tolist()}.")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "prune_outputs": self.prune_outputs,
                           "groups": {k: {"width": self.widths[k], "keep": list(v)} for k, v in self.keep.items()}},
                          indent=1)

    @classmethod
    def from_json(cls, text) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"Not a tfprune plan: invalid JSON ({e}).") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError(f"Not a tfprune plan: expected a JSON object with \"format\": \"{FORMAT}\".")
        try:
            groups = data["groups"]
            return cls(keep={k: v["keep"] for k, v in groups.items()},
                       widths={k: v["width"] for k, v in groups.items()},
                       prune_outputs=bool(data.get("prune_outputs", False)))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise PlanError(f"Malformed tfprune plan: each group needs \"width\" and \"keep\" ({e!r}).") from None

    def save(self, path):
        with open(os.fspath(path), "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path) -> "Plan":
        with open(os.fspath(path)) as f:
            return cls.from_json(f.read())

    def __repr__(self):
        pruned = {k: f"{len(v)}/{self.widths[k]}" for k, v in self.keep.items() if len(v) < self.widths[k]}
        return f"Plan({len(pruned)} of {len(self.keep)} groups pruned: {pruned})"
