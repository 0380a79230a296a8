"""Training helpers: `fine_tune` (with distillation), the Rethinking budgets (`scratch_b_epochs`), the Fashion-MNIST
loader (`datasets`) and the reference CNNs (`models`) of the examples and benchmarks."""
