"""`python -m medgpt <command>`: the same as the `medgpt` console command (medgpt/cli.py)."""
import sys

from medgpt.cli import main

sys.exit(main())
