"""Operations over the two phases: change detection and retraining (:mod:`.retrain`) and its schedules
(:mod:`.schedule`)."""
