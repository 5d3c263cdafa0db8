"""Training: the config's experiment (`setup`), train state, optimizer, jitted step, loop, metrics, benchmark.

    from diffax.train.loop import train
    state = train(config, workdir)     # resumes from workdir/checkpoints if there is one
"""
