"""Shipped lineage files: micro (tests), demo (default), paper (Horn & Elliott 2024)."""
