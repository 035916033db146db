// Tests for the Prefetch module: trace storage and CSV, training, plan following, replay.
