from bird_jax_demo import run

__doc__ = run.__doc__  # what --help shows

run.main()
