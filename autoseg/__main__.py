"""`python -m autoseg`: the command line (what `torchrun -m autoseg` starts on every rank)."""
from autoseg.cli import app

app(prog_name="autoseg")
