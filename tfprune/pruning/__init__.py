"""Planning and surgery: the `Plan` (channels each group keeps), `plan` (scores to a plan), targets such as
`plan_for_macs`, `mask` (zeros in place), `rebuild` (a new, smaller model) and `prune` (plan + rebuild)."""
