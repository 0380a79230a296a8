"""DMCPResult: a `SearchResult` with what DMCP learns besides the widths — the gates' marginals and expected
widths, and the expected MACs over the search."""

import dataclasses

import numpy as np

from tfprune.search.result import SearchResult


@dataclasses.dataclass
class DMCPResult(SearchResult):
    """What `tfprune.search.dmcp` found.

    `history` has one record every few training steps: `{"step", "phase" ("warmup" or "search"), "macs_ratio"
    (the expected MACs ratio), "widths" (each group's expected width, a float), "fitness" (None)}`.

    Attributes (besides those of `SearchResult`):
        expected_macs: the expected MACs ratio of the gates at the end of the search.
        expected_widths: `{group: expected kept channels}` at the end of the search.
        marginals: `{group: array of q_k}`, the probability that each channel group above the minimum is kept.
        expected_architecture_ratio: MACs ratio of the expected widths rounded to whole channels, before they
            were repaired onto the target.
        skipped: `{group: reason}` for prunable groups the search could not gate (kept whole).
        epochs: the per-epoch logs of `fit` (warm-up then search), `{log name: list}`.
        warmup_steps: the training steps of the warm-up (the history's steps count from the start).
    """

    expected_macs: float = 0.0
    expected_widths: dict = dataclasses.field(default_factory=dict)
    marginals: dict = dataclasses.field(default_factory=dict, repr=False)
    expected_architecture_ratio: float = 0.0
    skipped: dict = dataclasses.field(default_factory=dict)
    epochs: dict = dataclasses.field(default_factory=dict, repr=False)
    warmup_steps: int = 0

    def figure(self, title=None):
        """A matplotlib `Figure`: the expected MACs ratio and every group's expected width (as a fraction of its
        channels) over the search, and the chosen keep ratios next to uniform widths of the same MACs."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(14, 4.2), layout="constrained")
        macs_ax, width_ax, bar_ax = fig.subplots(1, 3, width_ratios=(1, 1.3, 1.4))
        steps = [h["step"] for h in self.history]
        macs_ax.plot(steps, [h["macs_ratio"] for h in self.history], color="tab:blue", label="expected MACs")
        if self.target_macs is not None:
            macs_ax.axhline(self.target_macs, color="k", linestyle="--", linewidth=1, label="target")
        for ax in (macs_ax, width_ax):
            if self.warmup_steps:
                ax.axvline(self.warmup_steps, color="gray", linestyle=":", linewidth=1)
            ax.set_xlabel("training step (dotted: end of warm-up)")
            ax.grid(alpha=0.3)
        macs_ax.set_ylabel("expected MACs / full MACs")
        macs_ax.legend(fontsize="small")
        names = list(self.widths)
        colors = [f"C{i % 10}" for i in range(len(names))]
        for name, color in zip(names, colors, strict=True):
            full = self.plan.widths[name]
            width_ax.plot(steps, [h["widths"][name] / full for h in self.history], color=color, linewidth=1,
                          label=name)
        width_ax.set_ylabel("expected width / channels")
        width_ax.set_ylim(0, 1.02)
        if len(names) <= 12:
            width_ax.legend(fontsize="xx-small", ncol=2)
        x = np.arange(len(names))
        bar_ax.bar(x, list(self.keep_ratios().values()), color=colors, label="DMCP (chosen)")
        if self.uniform_widths:
            uniform = self.keep_ratios(self.uniform_widths)
            bar_ax.plot(x, [uniform[n] for n in names], "k_", markersize=14, markeredgewidth=2,
                        label="uniform, same MACs")
        bar_ax.set_xticks(x, names, rotation=60, ha="right", fontsize="x-small")
        bar_ax.set_ylabel("fraction of channels kept")
        bar_ax.set_ylim(0, 1.05)
        bar_ax.legend(fontsize="small")
        bar_ax.grid(axis="y", alpha=0.3)
        fig.suptitle(title or f"DMCP search of '{getattr(self.model, 'name', 'model')}': target {self.target_macs}, "
                     f"expected {self.expected_macs:.3f}, rebuilt MACs ratio {self.macs_ratio:.3f}, "
                     f"{self.seconds:.0f} s")
        return fig
