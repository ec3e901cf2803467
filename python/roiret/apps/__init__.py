"""Applications on top of the library: the command line (:mod:`.cli`), the demo
(:mod:`.demo`) and the result pictures and pages (:mod:`.viz`)."""
