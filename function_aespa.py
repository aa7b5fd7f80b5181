"""AESPA (the original project's name for its AESPA loop): the mode lives in interaction/aespa.py."""

from interaction.aespa import MODE, FollowedRaterUser, update_consistent

__all__ = ["MODE", "FollowedRaterUser", "update_consistent"]
