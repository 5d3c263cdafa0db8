"""The training engine: train state (`state`), one optimizer step (`step`), the step runner that launches steps and
owns any speed machinery (`runner`), the optimizer and the metric writers. The loop that drives them is
the train mode, `diffax.modes.train`."""
