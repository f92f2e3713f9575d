"""Turns weights into something Triton serves: checkpoints, a rendered model repository, a manifest.

Nothing imports this package at serving time except the launcher, before it starts Triton.
"""
