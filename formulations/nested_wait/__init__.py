"""Nested WAIT (Ao, Luo, Simchi-Levi, Wang, arXiv 2504.11320): fluid-guided threshold scheduling under a KV limit."""
