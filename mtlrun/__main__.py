"""`python -m mtlrun ...` (what `torchrun -m mtlrun train ...` runs)."""

from mtlrun.cli import main

if __name__ == "__main__":
    main()
