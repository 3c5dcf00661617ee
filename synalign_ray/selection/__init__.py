"""Module 1 of SynAlign: exploration-aware sampling of demonstration groups (GP uncertainty)."""
