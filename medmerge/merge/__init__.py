"""Phase one, the merge: recipes (:mod:`.recipe`), the method registry (:mod:`.methods`), the streaming engine
that plans and writes a merge tensor by tensor (:mod:`.engine`, :mod:`.plan`), the architectures it knows
(:mod:`.arch`), the parents' compatibility (:mod:`.compat`), dtypes (:mod:`.precision`), mergekit's planner
behind one adapter (:mod:`.mergekit_planner`) and the merged checkpoint's model card (:mod:`.card`)."""
