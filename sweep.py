"""Leaderboard and plots of a sweep (the design card's command; the same as `medgpt sweep`).

    python sweep.py outputs/multirun/<date>/<time>
"""
import sys

from medgpt.tools.sweep import main

if __name__ == "__main__":
    sys.exit(main())
