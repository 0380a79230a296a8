"""He et al.'s channel pruning (ICCV 2017) as one family: LASSO channel selection (`lasso`), least-squares
reconstruction (`reconstruction`), and what both stand on: the captured layer inputs (`capturing`) and a layer seen as
a matrix product on sampled patches (`patches`)."""
