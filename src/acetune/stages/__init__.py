"""One module per stage: each has an `Args` dataclass and `run(args)`."""
