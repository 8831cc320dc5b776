"""Passes over a plain model: the fused CPU training form and the folded inference form of proxy norm."""
