"""What any phase runs on: local worker processes pinned to a device or a share of the cores
(:mod:`.workers`) and the measured cost of each step (:mod:`.cost`)."""
