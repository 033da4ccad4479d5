"""The trainer in three pieces: a loop (loop.py), a train step (step.py), and callbacks (callbacks.py)."""
