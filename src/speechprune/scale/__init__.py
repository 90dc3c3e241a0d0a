"""Scale-out on existing engines: job lists on Ray (:mod:`.executor`), training and recovery data-parallel under
torchrun (:mod:`.distributed`). Both are optional; the local, single-process path needs neither."""
