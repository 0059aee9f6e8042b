"""Phase one, the choice among merges: the search over candidates (:mod:`.search`, on N workers
:mod:`.parallel_search`, past the grid :mod:`.optuna_search`, raced :mod:`.racing`), the stderr-aware Pareto
frontier (:mod:`.pareto`), the comparison of several studies (:mod:`.comparison`), the figures
(:mod:`.figures`) and the promotion of a registered version (:mod:`.promotion`)."""
