"""The reverse process: solvers (one file per family), the `lax.scan` driver and classifier-free guidance."""

from diffax.sampling.driver import SOLVERS, make_sampler, sample
from diffax.sampling.guidance import classifier_free_guidance

__all__ = ["SOLVERS", "classifier_free_guidance", "make_sampler", "sample"]
