"""SPA (the original project's name for its SPA loop): the mode lives in interaction/spa.py."""

from interaction.spa import MODE, PreferenceUser, candidate_click, find_candidates, initial_click, preference_target

__all__ = ["MODE", "PreferenceUser", "candidate_click", "find_candidates", "initial_click", "preference_target"]
